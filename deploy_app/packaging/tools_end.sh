# shellcheck shell=bash

# MOTFM (deploy_app/packaging/map_context.py puts this in place of the last lines of holoscan-cli 4.2.0's tools).
# The folders the application is given must be usable by the user it runs as: one line says which is not.
check_folders() {
    local user output="${HOLOSCAN_OUTPUT_PATH}"
    user="uid $(id -u)"
    { [ -d "${HOLOSCAN_INPUT_PATH}" ] && [ -r "${HOLOSCAN_INPUT_PATH}" ] && [ -x "${HOLOSCAN_INPUT_PATH}" ]; } ||
        fatal "input folder ${HOLOSCAN_INPUT_PATH} is missing or cannot be read by ${user}"
    { [ -d "${HOLOSCAN_MODEL_PATH}" ] && [ -r "${HOLOSCAN_MODEL_PATH}" ] && [ -x "${HOLOSCAN_MODEL_PATH}" ]; } ||
        fatal "model folder ${HOLOSCAN_MODEL_PATH} is missing or cannot be read by ${user}"
    [ ! -e "${output}" ] || { [ -d "${output}" ] && [ -w "${output}" ] && [ -x "${output}" ]; } ||
        fatal "output folder ${output} cannot be written by ${user} (a read-only mount?)"
}

if [ -n "${SCRIPT_DIR}" ]; then
    case "${1:-}" in
        show | env | extract | help) ;;
        *) check_folders ;;
    esac
    main "$@"
    # the application's exit status is the container's (exit_code: set by main when it ran the application)
    exit "${exit_code:-$?}"
fi
