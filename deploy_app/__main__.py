"""``python deploy_app -i INPUT -o OUTPUT -m MODEL``: runs the MOTFM DICOM application (see app.py); exit status 1
when something could not be processed (the run report says what: motfm_deploy/report.py)."""

import logging
import sys

from motfm_deploy.cuda import load_cuda_runtime


def main() -> None:
    """Loads pip's CUDA runtime, then the app (which imports Holoscan), and runs it."""
    load_cuda_runtime()
    from app import RUN_ERRORS, MotfmApp

    try:
        MotfmApp().run()
    except RUN_ERRORS as e:
        logging.getLogger("motfm").error(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
