"""The microgpt workload's engines, each a way to run microgpt's training step.

`load_script(import_line)` loads examples/microgpt.py as a module: as written (its own
pure-Python engine, written the way microgpt writes its own: the baseline), or with its
engine block replaced by one import line, the only change a user makes. `DROP_INS` are
the lines the benchmarks and tests use. The fused model is fastgrad.gpt.GPT.
"""
import pathlib
import re
import types

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "microgpt.py"
ENGINE_BLOCK = re.compile(r"^# --- engine: begin ---\n.*?^# --- engine: end ---\n", re.S | re.M)

# the import a user puts in place of the script's engine block, per benchmark engine
DROP_INS = {
    "microgpt-style": None,                                 # the script as written
    "reference": "from fastgrad.reference import Value",
    "fastgrad": "from fastgrad._core import Value",       # = fastgrad.engine on the compiled engine
    "fastgrad-microgpt": "from fastgrad._core import GptValue as Value",   # = fastgrad.microgpt
}


def load_script(import_line=None):
    """examples/microgpt.py as a fresh module (its data shuffled and its weights drawn
    from seed 42 again), with its engine block replaced by import_line if given."""
    text = SCRIPT.read_text()
    if import_line is not None:
        text, count = ENGINE_BLOCK.subn(import_line + "\n", text)
        assert count == 1, "examples/microgpt.py must have one engine block"
    module = types.ModuleType("microgpt_script")
    module.__file__ = str(SCRIPT)
    exec(compile(text, str(SCRIPT), "exec"), module.__dict__)
    return module
