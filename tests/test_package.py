"""The package's lazy exports: each resolves to what it names, whatever was imported before
it, and `import zoolens` (and the data tools on arrays) stay free of torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import zoolens


def test_no_submodule_shadows_an_export():
    """Importing `zoolens.<module>` sets the package attribute `<module>` to that module, which
    would hide a lazy export of the same name (e.g. `zoolens.extract` the function)."""
    submodules = {m.name for m in pkgutil.iter_modules(zoolens.__path__)}
    clashes = [name for name, where in zoolens._EXPORTS.items()
               if name in submodules and where != f".{name}:"]
    assert clashes == []


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_exports_resolve_after_any_import_and_stay_light():
    out = _run("import sys, zoolens; print('torch' in sys.modules);"
               "import zoolens.cli.extract, zoolens.plan, zoolens.store;"
               "print(callable(zoolens.extract), callable(zoolens.rosetta),"
               "      callable(zoolens.ood.knn), callable(zoolens.curate.deduplicate))")
    assert out.splitlines() == ["False", "True True True True"]


def test_near_duplicates_on_arrays_never_import_torch():
    out = _run("import sys, numpy as np, zoolens;"
               "x = np.random.default_rng(0).standard_normal((200, 8)).astype('float32');"
               "x[1] = x[0];"
               "r = zoolens.curate.deduplicate(x, 0.99);"
               "print(r.removed.tolist(), 'torch' in sys.modules)")
    assert out == "[1] False"
