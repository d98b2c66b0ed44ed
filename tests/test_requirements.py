"""Requirements by role: each part's requirements file pins every package its code imports (the deploy app: also
what the bundle code it runs imports), a package pinned in two files is pinned to the same version, and the tests
run the pinned versions."""

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the project's own modules: its packages, and the bundle's scripts as a file run as a script imports them
LOCAL = {"scripts", "operators", "motfm_deploy", "app", "deploy_app", "pacs_node", "testbed"} | {
    p.stem for p in (ROOT / "bundle" / "scripts").glob("*.py")
}
APP = ROOT / "deploy_app"
# part -> (its code, its requirements file); the deploy app has its own test below
PARTS = {
    "bundle": (ROOT / "bundle" / "scripts", ROOT / "bundle" / "requirements.txt"),
    "node": (ROOT / "pacs_node", ROOT / "pacs_node" / "requirements.txt"),
    "packaging": (APP / "packaging", ROOT / "requirements.txt"),  # a build tool, not the app's run time
}
# imported only by bundle code the app never runs: the default data's template, minibatch OT coupling (training)
NOT_AT_RUN_TIME = {"nilearn", "ot"}
# used without an import statement: pydicom's decoders for compressed transfer syntaxes, scikit-image's wavelets
PLUGINS = {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "PyWavelets"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a requirements file and of the files it includes."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.update(pins((path.parent / line[3:].strip()).resolve()))
        elif line:
            name, _, version = line.partition("==")
            assert version, f"{path}: '{line}' is not pinned (name==version)"
            out[_normal(name)] = version.strip()
    return out


def imported_packages(files) -> set[str]:
    """Top-level names of the third-party modules that ``files`` import (lazy imports too)."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in LOCAL}


def unpinned(names: set[str], requirements: Path) -> dict[str, list[str]]:
    """The imported ``names`` whose distributions ``requirements`` does not pin, with those distributions."""
    pinned = pins(requirements)
    distributions = importlib.metadata.packages_distributions()
    return {
        name: distributions.get(name, [name])
        for name in names
        if not any(_normal(d) in pinned for d in distributions.get(name, [name]))
    }


@pytest.mark.parametrize("part", PARTS)
def test_each_part_pins_what_its_code_imports(part):
    folder, requirements = PARTS[part]
    nested = [code for code, _ in PARTS.values() if code != folder and code.is_relative_to(folder)]
    files = [p for p in folder.rglob("*.py") if not any(p.is_relative_to(n) for n in nested)]
    missing = unpinned(imported_packages(files), requirements)
    assert not missing, f"{requirements.relative_to(ROOT)} does not pin what {part} imports: {missing}"


def test_the_app_pins_what_it_and_the_bundle_code_it_runs_import(tmp_path):
    """The app loads a bundle as the app does, in a fresh process (this session's other tests import more of
    ``scripts``); every package that its code and the loaded bundle code import is pinned, with Holoscan 4.2.0 (the
    last holoscan-cli that packages)."""
    from testbed.bundles import make_bundle, tiny_deploy

    bundle = make_bundle(tmp_path / "motfm", tiny_deploy())
    code = (
        f"import sys, json; sys.path.insert(0, {str(APP)!r}); from motfm_deploy.model import Bundle; "
        f"Bundle({str(bundle)!r}).model; import scripts.synthetic_subjects; "  # the synthesis operator uses it
        "print(json.dumps([m.__file__ for n, m in sys.modules.items() if n.startswith('scripts.') and m.__file__]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    app_files = [p for p in APP.rglob("*.py") if not p.is_relative_to(PARTS["packaging"][0])]
    files = [*app_files, *json.loads(done.stdout.strip().splitlines()[-1])]
    requirements = APP / "requirements.txt"
    missing = unpinned(imported_packages(files) - NOT_AT_RUN_TIME, requirements)
    assert not missing, f"deploy_app/requirements.txt does not pin what the app runs: {missing}"
    pinned = pins(requirements)
    assert {_normal(p) for p in PLUGINS} <= set(pinned)
    assert pinned["holoscan-cu13"] == pinned["holoscan-cli"] == "4.2.0"


def test_a_package_has_one_version_everywhere():
    files = [ROOT / "requirements.txt", *(requirements for _, requirements in PARTS.values())]
    versions: dict[str, dict[str, str]] = {}
    for path in files:
        for name, version in pins(path).items():
            versions.setdefault(name, {})[str(path.relative_to(ROOT))] = version
    differ = {name: where for name, where in versions.items() if len(set(where.values())) > 1}
    assert not differ, f"pinned to different versions: {differ}"


def test_the_installed_versions_are_the_pinned_ones():
    wrong = {}
    for name, version in pins(ROOT / "requirements.txt").items():
        installed = importlib.metadata.version(name)
        if installed.split("+")[0] != version:  # torch's local label (+cpu) is the build, not the version
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from the pins (pinned, installed): {wrong}"


def test_the_project_installs_with_each_part_as_an_extra():
    """``pip install -e .`` builds (metadata only here): the bundle's pins are its dependencies, the app's and the
    node's its ``deploy`` and ``node`` extras, at the bundle's version."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation", "--quiet"]
        + ["--report", "-", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    metadata = json.loads(done.stdout)["install"][0]["metadata"]
    assert metadata["name"] == "motfm"
    assert metadata["version"] == json.loads((ROOT / "bundle/configs/metadata.json").read_text())["version"]
    assert set(metadata["provides_extra"]) == {"deploy", "node"}
    requires = metadata["requires_dist"]
    base = {r.replace(" ", "") for r in requires if "extra ==" not in r}
    assert base == {f"{name}=={version}" for name, version in _raw_pins(ROOT / "bundle/requirements.txt")}


def _raw_pins(path: Path) -> list[tuple[str, str]]:
    """(name as written, version) of a requirements file's own pins."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [tuple(line.split("==")) for line in lines if line and not line.startswith("-r")]
