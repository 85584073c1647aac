"""The package's shape holds: stages import only earlier stages, no framework internals,
a cheap top-level import, and every public name resolves."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayreward"

# The pipeline order: a module may import its own stage or an earlier one.
STAGES = ["config", "runtime", "data", "core", "evaluation", "job", "checks", "run", "tune", "serve", "commands"]

# The one module allowed to touch a framework's private names; its docstring says why.
ADAPTERS = {"rayreward.runtime._framework_internals"}
FRAMEWORKS = ("ray", "transformers", "datasets", "peft", "yaml", "accelerate", "deepspeed")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_every_module_lives_in_a_stage():
    loose = [m for m, _ in _modules() if _stage(m) is None and m not in ("rayreward", "rayreward.__main__")
             and not m.startswith("rayreward.sample_data")]
    assert loose == [], f"modules outside the stage subpackages: {loose}"


def test_no_stage_imports_a_later_one():
    bad = []
    for module, tree in _modules():
        own = _stage(module)
        if own is None:
            continue
        for target, _ in _imports(tree):
            other = _stage(target) if target.startswith("rayreward.") else None
            if other is not None and STAGES.index(other) > STAGES.index(own):
                bad.append(f"{module} imports {target}")
    assert bad == [], "lower stages import higher ones:\n" + "\n".join(bad)


def _own_private_names() -> set[str]:
    """Private names rayreward defines itself (attributes, functions, keywords)."""
    names = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def _framework_names(tree: ast.AST) -> set[str]:
    """Names a module binds to framework objects (``from transformers import TrainingArguments``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FRAMEWORKS:
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in FRAMEWORKS}
    return names


def private_uses(module: str, tree: ast.AST, own: set[str]) -> list[str]:
    """Private framework names a module reaches: imported, or read as attributes.

    An attribute read ``x._name`` passes when rayreward defines ``_name`` itself (its own
    objects' private state), unless ``x`` is a framework object the module imported
    (``TrainingArguments._VALID_DICT_FIELDS`` is transformers' name, whatever rayreward
    also calls ``_VALID_DICT_FIELDS``).
    """
    bad = []
    for target, names in _imports(tree):
        if target.split(".")[0] not in FRAMEWORKS:
            continue
        private = [p for p in target.split(".")[1:] if p.startswith("_")]
        private += [n for n in names if n.startswith("_")]
        if private:
            bad.append(f"{module}: from {target} import {', '.join(names)}")
    foreign = _framework_names(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        on_framework = isinstance(base, ast.Name) and base.id in foreign
        if on_framework or node.attr not in own:
            bad.append(f"{module}:{node.lineno}: .{node.attr}")
    return bad


def test_no_private_framework_names_outside_the_adapters():
    own = _own_private_names()
    bad = [use for module, tree in _modules() if module not in ADAPTERS for use in private_uses(module, tree, own)]
    assert bad == [], "private names used outside the adapter modules:\n" + "\n".join(bad)


def test_a_private_framework_name_is_caught_even_when_rayreward_has_one_of_that_name():
    code = ("from transformers import TrainingArguments\n"
            "import ray.train\n"
            "class Config:\n"
            "    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ['x']\n"
            "    _state = None\n"
            "def f(self):\n"
            "    return self._state, ray.train._internal\n")
    tree = ast.parse(code)
    own = {"_VALID_DICT_FIELDS", "_state", "_internal"}
    assert private_uses("m", tree, own) == ["m:4: ._VALID_DICT_FIELDS", "m:7: ._internal"]


# Sections of the job config: only the job stage and those above it know them by name.
JOB_SECTIONS = ("model", "lora", "data", "train", "scaling", "storage")
# The one reader of the layout older runs wrote into their checkpoints (rayreward_job.json).
LEGACY_JOB_READERS = {("rayreward.core.checkpoint", "_legacy_manifest")}


def job_section_reads(module: str, tree: ast.AST) -> list[str]:
    """Where a module reads a job config section by name.

    Caught: a section as a key (``x["lora"]``, ``x.get("model")``), a section as an
    attribute of a job (``job.model``), the attributes no object but a job has
    (``.lora``, ``.scaling``), and anything named ``job`` or ``*_section``.
    """
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (module, node.name) in LEGACY_JOB_READERS:
            exempt |= {id(n) for n in ast.walk(node)}
    bad = []

    def is_section(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in JOB_SECTIONS

    def job_named(name: str) -> bool:
        return name == "job" or name.endswith("_job") or name.endswith("_section")

    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        what = None
        if isinstance(node, ast.Subscript) and is_section(node.slice):
            what = f'["{node.slice.value}"]'
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
              and node.args and is_section(node.args[0])):
            what = f'.{node.func.attr}("{node.args[0].value}")'
        elif isinstance(node, ast.Attribute) and node.attr in JOB_SECTIONS and (
                node.attr in ("lora", "scaling") or isinstance(node.value, ast.Name) and job_named(node.value.id)):
            what = f".{node.attr}"
        elif isinstance(node, ast.Name) and job_named(node.id):
            what = node.id
        elif isinstance(node, ast.arg) and job_named(node.arg):
            what = node.arg
        if what is not None:
            bad.append(f"{module}:{node.lineno}: {what}")
    return bad


def test_core_knows_nothing_of_job_sections():
    """``core`` takes explicit arguments (``BaseModelSpec``, ``LoraSpec``, its checkpoint manifest)."""
    bad = [read for module, tree in _modules() if _stage(module) == "core" for read in job_section_reads(module, tree)]
    assert bad == [], "core reads job config sections:\n" + "\n".join(bad)


def test_a_job_section_read_is_caught():
    code = ("def load(model_section, spec):\n"
            "    kwargs = vars(model_section)\n"
            "    return spec.model, spec.name_or_path\n"
            "def lora(job):\n"
            "    return job.get('lora'), job['model']['dtype'], job.model, other.scaling\n"
            "def _legacy_manifest(job):\n"
            "    return job['model']\n")
    found = {f.removeprefix("m:") for f in job_section_reads("m", ast.parse(code))}
    assert found == {"1: model_section", "2: model_section", "4: job", '5: .get("lora")', '5: ["model"]',
                     "5: .model", "5: .scaling", "5: job", "6: job", "7: job", '7: ["model"]'}, found
    # The old checkpoints' reader is the one place allowed to know the job's layout.
    legacy = [f for f in job_section_reads("rayreward.core.checkpoint", ast.parse(code)) if int(f.split(":")[1]) >= 6]
    assert legacy == [], legacy


def test_import_rayreward_is_cheap_and_public_names_resolve():
    code = (
        "import sys, rayreward\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'deepspeed', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "missing = [n for n in rayreward.__all__ if getattr(rayreward, n, None) is None]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_names_its_public_surface(stage):
    """A stage's ``__init__`` docstring says what each of its modules (and subpackages) is for."""
    init = PACKAGE / stage / "__init__.py"
    assert init.exists(), f"rayreward/{stage} has no __init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    modules = [p.stem for p in (PACKAGE / stage).glob("*.py") if p.stem != "__init__"]
    modules += [p.name for p in (PACKAGE / stage).iterdir() if (p / "__init__.py").is_file()]
    unnamed = sorted(m for m in modules if f"``{m}``" not in doc)
    assert unnamed == [], f"rayreward/{stage}/__init__.py does not say what these modules are for: {unnamed}"


def test_the_adapter_and_the_readme_name_every_private_framework_name_the_adapter_uses():
    """What the README and the adapter's docstring say is what the adapter does."""
    path = PACKAGE / "runtime" / "_framework_internals.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
            and not n.attr.startswith("__")}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name.startswith("_")}
    doc = ast.get_docstring(tree)
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    assert used, "the adapter uses no private name: then it should not exist"
    assert [n for n in used if n not in doc] == [], "private names the adapter's docstring does not name"
    assert [n for n in used if n not in readme] == [], "private names the README does not name"


def test_one_list_of_attention_backends_no_stale_module_names_one_kind_of_plan():
    from rayreward.core import attention, config

    assert attention.BACKENDS is config.ATTENTION_BACKENDS
    stale = ("job_config", "model_setup", "distributed.build_trainer", "job.preflight", "job.tree")
    plans = []
    for module, tree in _modules():
        text = ast.unparse(tree) + (ast.get_docstring(tree) or "")
        assert not [s for s in stale if re.search(rf"\b{re.escape(s)}\b", text)], \
            f"{module} names a module that no longer exists"
        plans += [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("Plan")]
    assert plans == ["StepPlan"], f"'Plan' should name the step plan only: {plans}"


def test_a_subcommand_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch):
    from rayreward.commands import cli

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + ("no_such_command",))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()
