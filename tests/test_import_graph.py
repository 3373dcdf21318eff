"""The package's import graph, read from the source (function-level imports included): no
module imports itself through others, and each room imports only the rooms before it:
kernels -> layers -> models -> pretrained -> data -> training (experiments on top)."""

import ast
import pathlib

import attention_jax

PACKAGE = pathlib.Path(attention_jax.__file__).parent
ROOMS = ("kernels", "layers", "models", "pretrained", "data", "training")
# Modules beside the rooms, with the room they belong after.
LOOSE = {"allocator": "kernels", "viz": "training"}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str | None:
  """The package module a dotted name is: the longest prefix that is a file or package."""
  parts = name.split(".")
  while parts:
    path = PACKAGE.parent.joinpath(*parts)
    if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
      return ".".join(parts)
    parts.pop()
  return None


def import_graph() -> dict[str, set[str]]:
  graph = {}
  for path in PACKAGE.rglob("*.py"):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{alias.name}" for alias in node.names]
      else:
        continue
      imported |= {_resolve(n) for n in names if n.startswith("attention_jax")} - {None}
    graph[_module(path)] = imported - {_module(path)}
  return graph


def _room(module: str) -> int | None:
  parts = module.split(".")
  if len(parts) < 2:
    return None  # the package itself
  room = LOOSE.get(parts[1], parts[1])
  return ROOMS.index(room) + (0.5 if parts[1] in LOOSE else 0)


def _cycle(graph):
  """A cycle of the graph as a list of modules, or None."""
  state = {}

  def visit(module, path):
    state[module] = "open"
    for other in sorted(graph.get(module, ())):
      if other.startswith(module + "."):  # a package imports its own submodules
        continue
      if state.get(other) == "open":
        return path[path.index(other):] + [other]
      if other not in state:
        found = visit(other, path + [other])
        if found:
          return found
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state:
      found = visit(module, [module])
      if found:
        return found
  return None


def test_no_module_imports_itself_through_others():
  graph = import_graph()
  assert "attention_jax.training.train" in graph  # the walk sees the package
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_each_room_imports_only_the_rooms_before_it():
  wrong = [f"{module} imports {other}" for module, imported in import_graph().items()
           for other in imported
           if _room(module) is not None and _room(other) is not None
           and _room(other) > _room(module)]
  assert not wrong, "\n".join(sorted(wrong))


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
