"""The package's shape, read from the source: no import cycle, and the trainers are leaves (big_vision's rule: a
trainer imports only library modules, and only the main job imports a trainer)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINERS = {"peclr_jax.pretrain", "peclr_jax.probe"}


def _modules():
  """{module name: file} of every module of the package."""
  out = {}
  for d, _, files in os.walk(os.path.join(ROOT, "peclr_jax")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(d, f)
  return out


def _graph():
  """{module: the package's modules it imports}, at any depth of the file (imports inside functions count)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name in modules}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
        subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
        deps |= subs if len(subs) == len(node.names) else subs | {node.module}
    # A parent package is initialised before its submodules anyway; importing it is no dependency of interest.
    graph[name] = {d for d in deps if d != name and not name.startswith(d + ".") and d != "peclr_jax"}
  return graph


def test_the_package_has_no_import_cycle():
  graph, state, cycles = _graph(), {}, []

  def visit(m, path):
    state[m] = "open"
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        cycles.append(path[path.index(d) :] + [d] if d in path else path + [d])
      elif d not in state:
        visit(d, path + [d])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, cycles


def test_trainers_are_leaves():
  graph = _graph()
  assert TRAINERS <= set(graph)
  for t in TRAINERS:
    assert not graph[t] & TRAINERS, f"{t} imports {graph[t] & TRAINERS}"
  importers = {m for m, deps in graph.items() if deps & TRAINERS}
  assert importers == {"peclr_jax.main"}, importers


def test_the_graph_reader_sees_imports():
  """The checks above are only as good as the reader: it finds known edges, function-level ones included."""
  graph = _graph()
  assert {"peclr_jax.keypoints", "peclr_jax.loop", "peclr_jax.evaluate"} <= graph["peclr_jax.probe"]
  assert "peclr_jax.cli" in graph["peclr_jax.data.synthetic"]  # imported inside main()
  assert {"peclr_jax.pretrain", "peclr_jax.probe"} <= graph["peclr_jax.main"]
  assert "peclr_jax.models.conv" in graph["peclr_jax.models.resnet"]
