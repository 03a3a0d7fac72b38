"""The AVL time index of one shard (DESIGN §4): an in-memory interval tree over sealed blocks.

Each item is a block ``(min_ts, max_ts, block_id)``: int nanoseconds (any size, negative allowed)
with ``min_ts <= max_ts`` and a ``block_id`` unique within the tree.  The tree is an AVL tree keyed
by ``(min_ts, block_id)``; every node also stores the largest ``max_ts`` in its subtree
(``subtree_max_ts``), which lets ``overlapping`` skip whole subtrees that end before the window.

Guarantees:

- After every public call the tree is a valid AVL tree (|balance| <= 1, so height <=
  1.44·log2(n+2)) with correct stored heights and subtree maxima; ``check_invariants`` proves it.
- ``insert`` and ``remove`` are O(log n).  A rejected ``insert`` leaves the tree unchanged.
- ``overlapping(from, to)`` returns, in key order, the blocks whose closed interval
  ``[min_ts, max_ts]`` meets the half-open window ``[from, to)``.  It visits O(log n + k) nodes
  when blocks are roughly time-ordered (``max_ts`` grows with ``min_ts``, as sealed log blocks
  do); with arbitrary intervals the bound of a max-augmented tree is O(min(n, (k + 1)·log n)).
  ``last_visited_nodes`` reports the count of the last query so tests can check the pruning.
- ``from_items`` builds a perfectly balanced tree from any iterable in O(n log n) (O(n) when
  already sorted), for rebuilding the index from block headers at open.

The tree is not thread-safe: its owner (the shard's storage engine) serializes access.  This module
imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

#: One indexed block: ``(min_ts, max_ts, block_id)``.
Item = tuple[int, int, int]


class _Node:
    """One block plus the AVL bookkeeping for its subtree."""

    __slots__ = ("min_ts", "max_ts", "block_id", "left", "right", "height", "subtree_max_ts")

    def __init__(self, min_ts: int, max_ts: int, block_id: int) -> None:
        self.min_ts = min_ts
        self.max_ts = max_ts
        self.block_id = block_id
        self.left: _Node | None = None
        self.right: _Node | None = None
        # Height counts nodes, so a leaf is 1 and an empty subtree 0.
        self.height = 1
        self.subtree_max_ts = max_ts


def _update(node: _Node) -> None:
    """Recompute ``height`` and ``subtree_max_ts`` of ``node`` from its children (which must
    already be right).  Every structural change calls this bottom-up."""
    left, right = node.left, node.right
    left_height = 0
    right_height = 0
    subtree_max_ts = node.max_ts
    if left is not None:
        left_height = left.height
        if left.subtree_max_ts > subtree_max_ts:
            subtree_max_ts = left.subtree_max_ts
    if right is not None:
        right_height = right.height
        if right.subtree_max_ts > subtree_max_ts:
            subtree_max_ts = right.subtree_max_ts
    node.height = 1 + (left_height if left_height > right_height else right_height)
    node.subtree_max_ts = subtree_max_ts


def _height(node: _Node | None) -> int:
    return 0 if node is None else node.height


def _rotate_right(node: _Node) -> _Node:
    """Lift the left child over ``node``; returns the new subtree root.  The lowered node is
    updated first because the new root's augmentation depends on it."""
    pivot = node.left
    assert pivot is not None  # internal: only called when the left side is the taller one
    node.left = pivot.right
    pivot.right = node
    _update(node)
    _update(pivot)
    return pivot


def _rotate_left(node: _Node) -> _Node:
    """Mirror of ``_rotate_right``."""
    pivot = node.right
    assert pivot is not None  # internal: only called when the right side is the taller one
    node.right = pivot.left
    pivot.left = node
    _update(node)
    _update(pivot)
    return pivot


def _rebalance(node: _Node) -> _Node:
    """Refresh ``node`` after one of its subtrees changed height by at most one, rotating if its
    balance factor left [-1, 1]; returns the subtree's (possibly new) root."""
    _update(node)
    balance = _height(node.left) - _height(node.right)
    if balance > 1:
        left = node.left
        assert left is not None
        if _height(left.left) < _height(left.right):
            node.left = _rotate_left(left)  # left-right case: straighten into left-left
        return _rotate_right(node)
    if balance < -1:
        right = node.right
        assert right is not None
        if _height(right.right) < _height(right.left):
            node.right = _rotate_right(right)  # right-left case
        return _rotate_left(node)
    return node


def _key_less(min_ts_a: int, block_id_a: int, min_ts_b: int, block_id_b: int) -> bool:
    # Field comparison instead of building tuples: this runs log n times per insert/remove.
    return min_ts_a < min_ts_b or (min_ts_a == min_ts_b and block_id_a < block_id_b)


def _insert(node: _Node | None, new: _Node) -> _Node:
    """Insert ``new`` (whose key is known to be absent) below ``node``; returns the new root."""
    if node is None:
        return new
    if _key_less(new.min_ts, new.block_id, node.min_ts, node.block_id):
        node.left = _insert(node.left, new)
    else:
        node.right = _insert(node.right, new)
    return _rebalance(node)


def _pop_min(node: _Node) -> tuple[_Node | None, _Node]:
    """Detach the leftmost node of the subtree; returns (new subtree root, detached node)."""
    if node.left is None:
        return node.right, node
    node.left, smallest = _pop_min(node.left)
    return _rebalance(node), smallest


def _remove(node: _Node | None, min_ts: int, block_id: int) -> _Node | None:
    """Remove the node with key ``(min_ts, block_id)`` (known to be present) below ``node``."""
    if node is None:
        # The caller checked membership first, so reaching a leaf means the tree and the
        # block-id map disagree: corruption of our own state, not bad input.
        raise RuntimeError(f"time index lost block {block_id} (min_ts={min_ts}) from its tree")
    if _key_less(min_ts, block_id, node.min_ts, node.block_id):
        node.left = _remove(node.left, min_ts, block_id)
    elif _key_less(node.min_ts, node.block_id, min_ts, block_id):
        node.right = _remove(node.right, min_ts, block_id)
    else:
        if node.left is None:
            return node.right
        if node.right is None:
            return node.left
        # Two children: the in-order successor takes this node's place.
        right, successor = _pop_min(node.right)
        successor.left = node.left
        successor.right = right
        node = successor
    return _rebalance(node)


def _check_item(min_ts: int, max_ts: int, block_id: int) -> None:
    for name, value in (("min_ts", min_ts), ("max_ts", max_ts), ("block_id", block_id)):
        # bool is an int subclass but never a meaningful timestamp or id.
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"block {block_id!r}: {name} is {value!r} of type {type(value).__name__}; "
                "it must be an int (timestamps are integer nanoseconds)"
            )
    if min_ts > max_ts:
        raise ValueError(
            f"block {block_id} has min_ts={min_ts} > max_ts={max_ts}; a block's min_ts must be "
            "<= its max_ts (check the block header that produced it)"
        )


class IntervalTree:
    """AVL tree of blocks keyed by ``(min_ts, block_id)``, augmented with subtree max ``max_ts``.

    See the module docstring for the guarantees.
    """

    __slots__ = ("_root", "_min_ts_by_block_id", "_version", "last_visited_nodes")

    def __init__(self) -> None:
        self._root: _Node | None = None
        # block_id -> min_ts: enforces block-id uniqueness (not just key uniqueness) and answers
        # "is it there" in O(1).  Its size is the tree's size.
        self._min_ts_by_block_id: dict[int, int] = {}
        # Bumped by every mutation so an iterator can detect a change under it.
        self._version = 0
        #: Nodes examined by the last ``overlapping`` / ``ending_before`` call (diagnostics and
        #: tests of the pruning; 0 before any query).
        self.last_visited_nodes = 0

    @classmethod
    def from_items(cls, items: Iterable[Item]) -> IntervalTree:
        """Build a balanced tree from ``items`` in any order (the rebuild at open).

        Raises ValueError / TypeError like ``insert`` for a bad interval or a duplicate block id.
        """
        ordered: list[Item] = []
        min_ts_by_block_id: dict[int, int] = {}
        for min_ts, max_ts, block_id in items:
            _check_item(min_ts, max_ts, block_id)
            if block_id in min_ts_by_block_id:
                raise ValueError(
                    f"block {block_id} appears twice (min_ts={min_ts_by_block_id[block_id]} and "
                    f"min_ts={min_ts}); block ids must be unique in one shard's time index"
                )
            min_ts_by_block_id[block_id] = min_ts
            ordered.append((min_ts, max_ts, block_id))
        ordered.sort(key=lambda item: (item[0], item[2]))  # timsort: O(n) when already sorted

        def build(lo: int, hi: int) -> _Node | None:
            # Middle element as root: the two halves differ in size by at most one, so their
            # heights differ by at most one and the result is a valid AVL tree.
            if lo >= hi:
                return None
            mid = (lo + hi) // 2
            node = _Node(*ordered[mid])
            node.left = build(lo, mid)
            node.right = build(mid + 1, hi)
            _update(node)
            return node

        tree = cls()
        tree._root = build(0, len(ordered))
        tree._min_ts_by_block_id = min_ts_by_block_id
        return tree

    def insert(self, min_ts: int, max_ts: int, block_id: int) -> None:
        """Add a block.  ValueError if ``block_id`` is already indexed or ``min_ts > max_ts``."""
        _check_item(min_ts, max_ts, block_id)
        existing_min_ts = self._min_ts_by_block_id.get(block_id)
        if existing_min_ts is not None:
            raise ValueError(
                f"block {block_id} is already in the time index (min_ts={existing_min_ts}); "
                "block ids must be unique: remove the old entry before inserting it again"
            )
        self._root = _insert(self._root, _Node(min_ts, max_ts, block_id))
        self._min_ts_by_block_id[block_id] = min_ts
        self._version += 1

    def remove(self, min_ts: int, block_id: int) -> bool:
        """Remove the block with key ``(min_ts, block_id)``; False if no such block is indexed."""
        if self._min_ts_by_block_id.get(block_id) != min_ts:
            return False
        self._root = _remove(self._root, min_ts, block_id)
        del self._min_ts_by_block_id[block_id]
        self._version += 1
        return True

    def overlapping(self, from_ns: int | None, to_ns: int | None) -> list[Item]:
        """Blocks with ``min_ts < to_ns`` and ``max_ts >= from_ns`` (None = unbounded), sorted by
        ``(min_ts, block_id)``.  An empty window (``from_ns >= to_ns``) matches nothing."""
        result: list[Item] = []
        if from_ns is not None and to_ns is not None and from_ns >= to_ns:
            self.last_visited_nodes = 0
            return result
        visited = 0
        stack: list[_Node] = []
        node = self._root
        # In-order walk with two prunings:
        # - a subtree whose largest max_ts is < from_ns holds nothing that reaches the window;
        # - once a node has min_ts >= to_ns, it and every later node in key order start at or
        #   after the window's end, so the walk stops.
        while True:
            while node is not None:
                visited += 1
                if from_ns is not None and node.subtree_max_ts < from_ns:
                    break
                stack.append(node)
                node = node.left
            if not stack:
                break
            node = stack.pop()
            if to_ns is not None and node.min_ts >= to_ns:
                break
            if from_ns is None or node.max_ts >= from_ns:
                result.append((node.min_ts, node.max_ts, node.block_id))
            node = node.right
        self.last_visited_nodes = visited
        return result

    def ending_before(self, cutoff_ns: int) -> list[Item]:
        """Blocks with ``max_ts < cutoff_ns`` (wholly older than the cutoff: retention
        candidates), sorted by ``(min_ts, block_id)``.

        Visits O(log n + k + s) nodes, s being the blocks that straddle the cutoff
        (``min_ts < cutoff_ns <= max_ts``).
        """
        result: list[Item] = []
        visited = 0
        stack: list[_Node] = []
        node = self._root
        while True:
            while node is not None:
                visited += 1
                stack.append(node)
                node = node.left
            if not stack:
                break
            node = stack.pop()
            # max_ts >= min_ts, so from the first node starting at or after the cutoff onwards
            # (in key order) nothing can end before it.
            if node.min_ts >= cutoff_ns:
                break
            if node.max_ts < cutoff_ns:
                result.append((node.min_ts, node.max_ts, node.block_id))
            node = node.right
        self.last_visited_nodes = visited
        return result

    def __len__(self) -> int:
        return len(self._min_ts_by_block_id)

    def __iter__(self) -> Iterator[Item]:
        """All blocks in key order.  Raises RuntimeError if the tree changes during iteration."""
        version = self._version
        stack: list[_Node] = []
        node = self._root
        while stack or node is not None:
            while node is not None:
                stack.append(node)
                node = node.left
            node = stack.pop()
            yield (node.min_ts, node.max_ts, node.block_id)
            if self._version != version:
                raise RuntimeError("time index changed during iteration; iterate over a copy")
            node = node.right

    def __repr__(self) -> str:
        return f"IntervalTree(blocks={len(self)}, height={self.height()})"

    def height(self) -> int:
        """Levels of nodes: 0 when empty, 1 for a single block."""
        return _height(self._root)

    def check_invariants(self) -> None:
        """Verify the whole tree; raise RuntimeError naming the first broken invariant.

        Checked: BST order by ``(min_ts, block_id)`` and ``min_ts <= max_ts`` per node, stored
        heights, AVL balance (|bf| <= 1), subtree max ``max_ts``, and that the node count and
        keys agree with the block-id map.  O(n); meant for tests and debugging.
        """
        seen: dict[int, int] = {}

        def check(
            node: _Node | None, low: tuple[int, int] | None, high: tuple[int, int] | None
        ) -> tuple[int, int | None]:
            """Returns (height, subtree max max_ts or None when empty)."""
            if node is None:
                return 0, None
            key = (node.min_ts, node.block_id)
            where = f"block {node.block_id} (min_ts={node.min_ts}, max_ts={node.max_ts})"
            if (low is not None and key <= low) or (high is not None and key >= high):
                raise RuntimeError(
                    f"BST order broken at {where}: key {key} is outside its subtree's "
                    f"range ({low}, {high})"
                )
            if node.min_ts > node.max_ts:
                raise RuntimeError(f"interval broken at {where}: min_ts > max_ts")
            if node.block_id in seen:
                raise RuntimeError(f"block-id uniqueness broken: {where} appears twice")
            seen[node.block_id] = node.min_ts
            left_height, left_max = check(node.left, low, key)
            right_height, right_max = check(node.right, key, high)
            height = 1 + max(left_height, right_height)
            if node.height != height:
                raise RuntimeError(
                    f"stored height broken at {where}: stored {node.height}, actual {height}"
                )
            if abs(left_height - right_height) > 1:
                raise RuntimeError(
                    f"AVL balance broken at {where}: left height {left_height}, "
                    f"right height {right_height}"
                )
            subtree_max_ts = max(m for m in (node.max_ts, left_max, right_max) if m is not None)
            if node.subtree_max_ts != subtree_max_ts:
                raise RuntimeError(
                    f"subtree max broken at {where}: stored {node.subtree_max_ts}, "
                    f"actual {subtree_max_ts}"
                )
            return height, subtree_max_ts

        check(self._root, None, None)
        if seen != self._min_ts_by_block_id:
            raise RuntimeError(
                f"size/membership broken: the tree holds {len(seen)} blocks but the block-id map "
                f"holds {len(self._min_ts_by_block_id)} (or their min_ts disagree)"
            )
