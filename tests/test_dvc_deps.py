"""dvc.yaml must make DVC re-run a stage whenever code that stage runs changes.

For every stage whose command runs `resnetlab <sub>`, the code it runs is the import closure of
the module `resnetlab.cli.command_module(<sub>)` names (plus the `resnetlab.cli` dispatcher),
computed here from the source with `ast`: module-level and lazy (in-function) imports, relative
imports and parent packages, but not
imports under `if TYPE_CHECKING:`, which never run. Each module file in that closure must be a
stage dep, or lie under a dep directory, unless OUTPUT_NEUTRAL exempts it. Conversely every `src/`
dep must exist and be code the stage runs, so that an edit elsewhere causes no needless re-run.

Static analysis sees only imports written as such: `importlib.import_module("literal")` is
followed, an import built from a runtime string (as the cli does for the stage) is not.
"""

from __future__ import annotations

import ast
import copy
import functools
import itertools
import os
import posixpath
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from resnetlab.cli import command_module

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "resnetlab"

# Module files a stage runs whose edits cannot change any DVC output value; no stage needs a dep on
# them (paths relative to the repo root; an entry ending in "/" covers a whole package). The one
# list: dvc.yaml's header comment and docs/architecture.md name exactly these (checked below).
OUTPUT_NEUTRAL: dict[str, str] = {
    "src/resnetlab/__init__.py": "package marker and version string",
    "src/resnetlab/cli.py": "argument dispatch shell around the command modules",
    "src/resnetlab/core/__init__.py": "docstring only",
    "src/resnetlab/core/errors.py": (
        "exception classes; change how a failure is reported, never an output"
    ),
    "src/resnetlab/core/atomic.py": "how a file is written (temp + rename), not what is in it",
    "src/resnetlab/core/allocator.py": "how freed memory is reused: speed, never a value",
    "src/resnetlab/data/__init__.py": "docstring only",
    "src/resnetlab/evaluate/__init__.py": "docstring only",
    "src/resnetlab/pipeline/__init__.py": "docstring only",
    "src/resnetlab/report/__init__.py": "docstring only",
    "src/resnetlab/train/__init__.py": "docstring only",
    "src/resnetlab/train/console.py": "terminal progress display",
    "src/resnetlab/tracking/": (
        "MLflow records what stages compute; nothing it writes is a DVC output value"
        " (the run id file holds an opaque id)"
    ),
}


def output_neutral_as_named() -> set[str]:
    """OUTPUT_NEUTRAL as dvc.yaml's comment and the docs name it: paths below src/resnetlab/,
    the docstring-only package __init__ files left to one phrase."""
    return {
        key.removeprefix("src/resnetlab/")
        for key, why in OUTPUT_NEUTRAL.items()
        if not key.endswith("/__init__.py") or why != "docstring only"
    } - {"__init__.py"}


def output_neutral(file: str) -> bool:
    """Whether OUTPUT_NEUTRAL exempts `file` (a repo-relative path), itself or by its package."""
    return file in OUTPUT_NEUTRAL or any(
        key.endswith("/") and file.startswith(key) for key in OUTPUT_NEUTRAL
    )


# --- import closure -----------------------------------------------------------------------------


def module_file(src_root: Path, module: str) -> Path | None:
    """The file that defines `module` under `src_root` (a module or a package), or None."""
    base = src_root.joinpath(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (any `<x>.TYPE_CHECKING`)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, skipping the bodies that run only for a type checker."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            branches: list[ast.stmt] = child.orelse  # `if TYPE_CHECKING: ... else: <runs>`
        elif (
            isinstance(child, ast.If)
            and isinstance(child.test, ast.UnaryOp)
            and isinstance(child.test.op, ast.Not)
            and _is_type_checking(child.test.operand)
        ):
            branches = child.body  # `if not TYPE_CHECKING: <runs> else: ...`
        else:
            yield child
            yield from _runtime_nodes(child)
            continue
        for stmt in branches:
            yield stmt
            yield from _runtime_nodes(stmt)


def imported_names(path: Path, module: str) -> frozenset[str]:
    """Dotted names of the modules (or module attributes) `path`, the file of `module`, imports."""
    stat = path.stat()
    return _imported_names(str(path), stat.st_mtime_ns, stat.st_size, module)


@functools.cache
def _imported_names(path: str, _mtime_ns: int, _size: int, module: str) -> frozenset[str]:
    # Cached per file version: every variant of a foreach stage walks the same files.
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    is_package = Path(path).name == "__init__.py"
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                if keep <= 0:
                    continue  # beyond the top-level package: not ours
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from pkg import sub` imports the submodule pkg.sub when there is one; a name that is
            # no module resolves to nothing in the caller and only `base` counts.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"import_module", "__import__"}
                )
            )
        ):
            names.add(node.args[0].value)
    return frozenset(names)


def import_closure(src_root: Path, package: str, entries: Iterable[str]) -> dict[str, Path]:
    """Module name -> file for every module of `package` that importing `entries` runs."""
    closure: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name != package and not name.startswith(package + "."):
            continue  # third-party or standard library
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c first runs a and a.b
            mod = ".".join(parts[:i])
            if mod in closure:
                continue
            path = module_file(src_root, mod)
            if path is None:
                break  # an attribute of the package above (`from pkg import func`), or missing
            closure[mod] = path
            todo.extend(imported_names(path, mod))
    return closure


# --- dvc.yaml -----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
_MISSING = object()


def _lookup(context: Mapping[str, Any], dotted: str) -> Any:
    value: Any = context
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def interpolate(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` with `${name}` resolved from `context`; unknown names are left as written."""
    if isinstance(value, str):
        whole = _INTERPOLATION.fullmatch(value.strip())
        if whole:  # `${variants}` alone may stand for a dict or a list
            found = _lookup(context, whole.group(1))
            return value if found is _MISSING else found

        def substitute(match: re.Match[str]) -> str:
            found = _lookup(context, match.group(1))
            return match.group(0) if found is _MISSING else str(found)

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(v, context) for v in value]
    if isinstance(value, dict):
        return {interpolate(k, context): interpolate(v, context) for k, v in value.items()}
    return value


def global_context(dvc: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """What `${...}` can name: params.yaml (DVC loads it by default), then each `vars` entry."""
    context: dict[str, Any] = {}
    default = root / "params.yaml"
    if default.is_file():
        context.update(yaml.safe_load(default.read_text(encoding="utf-8")) or {})
    for entry in dvc.get("vars") or []:
        if isinstance(entry, Mapping):
            context.update(interpolate(dict(entry), context))
        elif isinstance(entry, str):  # `file.yaml` or `file.yaml:key1,key2`
            file_name, _, keys = entry.partition(":")
            path = root / file_name
            if path.suffix in {".yaml", ".yml"} and path.is_file():
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                wanted = [k.strip() for k in keys.split(",") if k.strip()] or list(loaded)
                context.update({k: loaded[k] for k in wanted if k in loaded})
    return context


def _variants(name: str, spec: Mapping[str, Any], context: Mapping[str, Any]) -> Iterator[Any]:
    """(stage name, per-variant context) for each variant of a foreach or matrix stage."""
    if "foreach" in spec:
        target = interpolate(spec["foreach"], context)
        if isinstance(target, Mapping) and target:
            for key, item in target.items():
                yield f"{name}@{key}", {"key": key, "item": item}
        elif isinstance(target, list) and target:
            for index, item in enumerate(target):
                yield f"{name}@{index}", {"item": item}
        else:  # unresolvable: keep `${key}`/`${item}` as wildcards
            yield name, {}
    else:
        matrix = {k: interpolate(v, context) for k, v in (spec.get("matrix") or {}).items()}
        axes = {  # a dict axis (`${variants}`) varies over its keys
            k: list(v) if isinstance(v, list | dict) else [v] for k, v in matrix.items()
        }
        combos = list(itertools.product(*axes.values())) if axes else []
        if not combos:
            yield name, {}
        for combo in combos:
            item = dict(zip(axes, combo, strict=True))
            key = "-".join(str(v) for v in combo)
            yield f"{name}@{key}", {"item": item, "key": key}


def _dep_paths(deps: Any, wdir: str) -> list[str]:
    paths = []
    for dep in deps or []:
        for path in dep if isinstance(dep, Mapping) else [dep]:
            paths.append(posixpath.normpath(posixpath.join(wdir, str(path))))
    return paths


def resolve_stages(dvc: Mapping[str, Any], root: Path = REPO) -> dict[str, dict[str, Any]]:
    """Stage name (`train@plain20` for a variant) -> {"cmds": [str], "deps": [path]}."""
    context = global_context(dvc, root)
    stages: dict[str, dict[str, Any]] = {}
    for name, spec in (dvc.get("stages") or {}).items():
        spec = spec or {}
        if "do" in spec:
            variants = list(_variants(name, spec, context))
            body = spec["do"] or {}
        elif "matrix" in spec:  # the stage body sits beside `matrix`
            variants = list(_variants(name, spec, context))
            body = {k: v for k, v in spec.items() if k != "matrix"}
        else:
            variants, body = [(name, {})], spec
        for variant_name, local in variants:
            resolved = interpolate(body, {**context, **local})
            cmd = resolved.get("cmd") or []
            stages[variant_name] = {
                "cmds": [str(c) for c in (cmd if isinstance(cmd, list) else [cmd])],
                "deps": _dep_paths(resolved.get("deps"), str(resolved.get("wdir") or ".")),
            }
    return stages


def stage_entries(cmd: str) -> list[str]:
    """Modules a command runs: `resnetlab <sub>`, also after `VAR=x` or as `python -m resnetlab`."""
    entries = []
    for line in re.split(r"&&|\|\||;|\n", cmd):
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            words.pop(0)
        if words and words[0] == "env":
            words.pop(0)
            while words and "=" in words[0]:
                words.pop(0)
        if not words:
            continue
        if os.path.basename(words[0]) == PACKAGE:
            args = words[1:]
        elif re.fullmatch(r"python[\d.]*", os.path.basename(words[0])) and words[1:3] == [
            "-m",
            PACKAGE,
        ]:
            args = words[3:]
        else:
            continue
        sub = next((a for a in args if not a.startswith("-")), None)  # as cli._chosen_stage
        if sub:
            entries += [f"{PACKAGE}.cli", command_module(sub)]
    return entries


def base_name(stage: str) -> str:
    return stage.split("@", 1)[0]


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def stage_closures(
    stages: Mapping[str, Mapping[str, Any]], root: Path = REPO
) -> dict[str, set[str]]:
    """Stage name -> repo-relative files of the code it runs, for each stage that runs resnetlab."""
    closures = {}
    for name, stage in stages.items():
        entries = [e for cmd in stage["cmds"] for e in stage_entries(cmd)]
        if entries:
            closure = import_closure(root / "src", PACKAGE, entries)
            closures[name] = {_rel(path, root) for path in closure.values()}
    return closures


def _covers(dep: str, file: str) -> bool:
    dep = dep.rstrip("/")
    return file == dep or file.startswith(dep + "/")


def missing_deps(
    stages: Mapping[str, Mapping[str, Any]], root: Path = REPO
) -> dict[str, list[str]]:
    """Stage (base name) -> closure files its deps do not cover; only stages that miss some."""
    missing: dict[str, set[str]] = {}
    for name, files in stage_closures(stages, root).items():
        deps = stages[name]["deps"]
        for file in files:
            if not output_neutral(file) and not any(_covers(d, file) for d in deps):
                missing.setdefault(base_name(name), set()).add(file)
    return {name: sorted(files) for name, files in missing.items()}


def stale_deps(stages: Mapping[str, Mapping[str, Any]], root: Path = REPO) -> list[str]:
    """`<stage>: <dep> (<why>)` for each src/ dep that is absent or not code the stage runs."""
    closures = stage_closures(stages, root)
    findings = set()
    for name, stage in stages.items():
        for dep in stage["deps"]:
            if dep != "src" and not dep.startswith("src/"):
                continue
            if not (root / dep).exists():
                findings.add(f"{base_name(name)}: {dep} (does not exist)")
            elif not any(_covers(dep, f) for f in closures.get(name, ())):
                findings.add(f"{base_name(name)}: {dep} (not code the stage runs)")
    return sorted(findings)


def load_dvc(root: Path = REPO) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))


# --- tests --------------------------------------------------------------------------------------

DVC = load_dvc()
STAGES = resolve_stages(DVC)
RESNETLAB_STAGES = sorted({base_name(name) for name in stage_closures(STAGES)})


def test_dvc_yaml_has_resnetlab_stages() -> None:
    assert {"prepare", "train", "evaluate", "compare"} <= set(RESNETLAB_STAGES)


@pytest.mark.parametrize("stage", RESNETLAB_STAGES)
def test_every_stage_depends_on_its_import_closure(stage: str) -> None:
    missing = missing_deps(STAGES).get(stage)
    assert not missing, f"{stage}: dvc.yaml deps miss {', '.join(missing)}"


def test_stage_deps_exist_and_are_not_stale() -> None:
    stale = stale_deps(STAGES)
    assert not stale, "stale src deps in dvc.yaml:\n" + "\n".join(stale)


def test_checker_catches_a_missing_dep() -> None:
    dvc = copy.deepcopy(DVC)
    spec = dvc["stages"]["train"]
    body = spec.get("do", spec)
    closure = set().union(
        *(files for name, files in stage_closures(STAGES).items() if base_name(name) == "train")
    )
    removed = next(
        d for d in body["deps"] if isinstance(d, str) and any(_covers(d, f) for f in closure)
    )
    assert removed.startswith("src/")
    body["deps"].remove(removed)

    before = set(missing_deps(STAGES).get("train", []))
    after = missing_deps(resolve_stages(dvc)).get("train", [])
    newly_missing = set(after) - before
    assert newly_missing, f"removing {removed} from train's deps went unnoticed"
    assert all(_covers(removed, f) for f in newly_missing), (removed, newly_missing)
    if removed.endswith(".py"):
        assert removed in after


def test_import_closure_follows_lazy_from_and_parent_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": (
            "from typing import TYPE_CHECKING\n"
            "import os\n"
            "if TYPE_CHECKING:\n"
            "    from pkg import d\n"
            "def f():\n"
            "    import pkg.b\n"
            "    return pkg.b\n"
        ),
        "b.py": "from pkg import c\nfrom .sub.e import thing\n",
        "c.py": "import json\n",
        "d.py": "import pkg.never\n",
        "sub/__init__.py": "",
        "sub/e.py": "thing = 1\n",
        "never.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)

    closure = import_closure(tmp_path, "pkg", ["pkg.a"])

    assert set(closure) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.e"}
    assert "pkg.d" not in closure  # imported only for the type checker
    assert closure["pkg.sub"] == pkg / "sub" / "__init__.py"
    assert closure["pkg.c"] == pkg / "c.py"


def test_stage_entries_parse_command_forms() -> None:
    assert stage_entries("resnetlab train --variant x") == [
        "resnetlab.cli",
        "resnetlab.pipeline.train",
    ]
    assert stage_entries("OMP_NUM_THREADS=1 python -m resnetlab -q evaluate --out m")[1:] == [
        "resnetlab.pipeline.evaluate"
    ]
    assert stage_entries("echo hi && resnetlab compare")[1:] == ["resnetlab.pipeline.compare"]
    assert stage_entries("python other.py --resnetlab train") == []


def test_foreach_and_matrix_stages_expand() -> None:
    dvc = {
        "vars": [{"out": "o"}],
        "stages": {
            "a": {
                "foreach": {"x": 1, "y": 2},
                "do": {"cmd": "c ${key}", "deps": ["${out}/${key}"]},
            },
            "m": {
                "matrix": {"p": ["u", "v"], "k": [0, 1]},
                "cmd": "c ${item.p}",
                "deps": ["src/${item.p}"],
            },
        },
    }
    stages = resolve_stages(dvc, root=Path("/nonexistent"))
    assert stages["a@x"] == {"cmds": ["c x"], "deps": ["o/x"]}
    assert stages["m@v-1"]["deps"] == ["src/v"]


def test_dvc_yaml_names_exactly_the_output_neutral_modules() -> None:
    """dvc.yaml's header comment lists the exempt modules a reader sees; OUTPUT_NEUTRAL is the
    one list, so the two must name the same ones (the package __init__ files, docstrings only,
    as one phrase)."""
    header = (REPO / "dvc.yaml").read_text(encoding="utf-8").split("\nvars:", 1)[0]
    named = set(re.findall(r"\b([a-z_]+(?:/[a-z_]+)*(?:\.py|/))(?=[ ,)])", header))
    named -= {"tests/test_dvc_deps.py"}
    assert named == output_neutral_as_named()
    assert "__init__ files, which hold docstrings only" in " ".join(header.split())


def test_dvc_yaml_folders_are_the_layout_modules() -> None:
    """dvc.yaml's `vars` and `core.layout` declare the same folders: the stages get theirs from
    dvc.yaml, the tools and the web app default to layout's."""
    from resnetlab.core import layout

    folders = DVC["vars"][0]
    assert {k: folders[k] for k in ("raw", "prepared", "models", "metrics", "reports")} == {
        "raw": layout.RAW.as_posix(),
        "prepared": layout.PREPARED.as_posix(),
        "models": layout.MODELS.as_posix(),
        "metrics": layout.METRICS.as_posix(),
        "reports": layout.REPORTS.as_posix(),
    }
