"""Writes the deploy app's MONAI Application Package build context with the pinned packager, offline.

``monai-deploy package`` (holoscan-cli 4.2.0) writes a build context (Dockerfile, map/app.json, map/pkg.json,
app.config, tools, pip/requirements.txt, app/, models/) into a temporary folder, then builds it with Docker buildx,
which needs the network. This runs the same packager code up to that build and keeps the context in OUT; the
packager's release manifest comes from ``artifacts.json`` beside this file (``--source``) instead of a download.
Two additions:

- ``tools``, the package's entrypoint, exits with the application's status (4.2.0's always exits 0) and, before the
  application starts, stops with one line when its input, model or output folder is unusable (``tools_end.sh``);
- ``Dockerfile.cpu``, rendered from ``Dockerfile.cpu.jinja2`` with the packager's own parameters: a CPU-only image
  of the same layout that builds offline (``deploy_app/package.sh image``).

    python deploy_app/packaging/map_context.py OUT MODELS
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from holoscan_cli.__main__ import parse_args, set_up_logging
from holoscan_cli.packager import packager
from holoscan_cli.packager.arguments import PackagingArguments
from holoscan_cli.packager.container_builder import PythonAppBuilder
from jinja2 import Environment, FileSystemLoader, StrictUndefined

HERE = Path(__file__).resolve().parent
APP = HERE.parent
IMAGE_NAME = "motfm-dicom"
PLATFORM = "x86_64"
# the last lines of holoscan-cli 4.2.0's tools script, replaced by tools_end.sh
TOOLS_END = '\nif [ -n "${SCRIPT_DIR}" ]; then\n    main "$@"\nfi\n'


def package_arguments(models: Path) -> argparse.Namespace:
    """The arguments of ``monai-deploy package deploy_app -c deploy_app/app.yaml -m MODELS -t motfm-dicom
    --platform x86_64 --source packaging/artifacts.json``, parsed by the packager."""
    argv = ["package", str(APP), "-c", str(APP / "app.yaml"), "-m", str(models), "-t", IMAGE_NAME]
    argv += ["--platform", PLATFORM, "--sdk", "monai-deploy", "--source", str(HERE / "artifacts.json")]
    return parse_args(["monai-deploy", *argv])


def fix_tools(path: Path) -> None:
    """Makes the package's entrypoint check the application's folders and exit with the application's status."""
    text = path.read_text()
    if text.count(TOOLS_END) != 1 or not text.endswith(TOOLS_END):
        raise RuntimeError(f"{path}: not holoscan-cli 4.2.0's tools script (its last lines differ); not changed")
    path.write_text(text.removesuffix(TOOLS_END) + (HERE / "tools_end.sh").read_text())


def write_context(out: Path, models: Path) -> str:
    """Writes the build context into ``out`` (replaced); returns the package's image tag."""
    if out.exists() and any(out.iterdir()):
        if not (out / "map" / "app.json").is_file():
            raise FileExistsError(f"{out} is not empty and not a package build context: not replaced")
        shutil.rmtree(out)
    args = package_arguments(models)
    set_up_logging("WARN")
    out.mkdir(parents=True, exist_ok=True)
    packaging = PackagingArguments(args, str(out))
    packager._create_app_manifest(packaging.application_manifest, str(out))
    packager._create_package_manifest(packaging.package_manifest, str(out))
    builder = PythonAppBuilder(packaging.build_parameters, str(out))
    (platform,) = packaging.platforms
    builder._copy_supporting_files(platform)
    builder._write_dockerfile(platform)
    fix_tools(out / "tools")

    build = packaging.build_parameters
    template = Environment(
        loader=FileSystemLoader(HERE), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    ).get_template("Dockerfile.cpu.jinja2")
    settings = {**build.to_jinja, **platform.to_jinja, "uid": build.uid, "gid": build.gid, "username": build.username}
    (out / "Dockerfile.cpu").write_text(template.render(settings))
    return platform.tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the build context into (replaced)")
    parser.add_argument("models", type=Path, help="the package's model folder (one sub-folder: the bundle)")
    options = parser.parse_args()
    if not (options.models.is_dir() and any(options.models.iterdir())):
        sys.exit(f"error: model folder {options.models} is missing or empty")
    try:
        print(write_context(options.out, options.models))
    except (FileExistsError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
