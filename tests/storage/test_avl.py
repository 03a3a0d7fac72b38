"""Tests of storage.avl.IntervalTree against a plain oracle: a dict of blocks, sorted on demand.

Random tests take their seed from a parametrized list plus one fresh seed per run; the seed is
printed and put into every assertion message so a failure can be replayed with
``SHARDLOG_TEST_SEED=<seed>``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from storage.avl import IntervalTree, _Node

Item = tuple[int, int, int]

# One fresh seed per run widens coverage over time; the fixed ones keep every run comparable.
_FRESH_SEED = int(os.environ.get("SHARDLOG_TEST_SEED", random.randrange(2**32)))
# A fixed id for the fresh seed keeps collection identical across pytest-xdist workers.
SEEDS = [0, 1, 20240101, pytest.param(_FRESH_SEED, id="fresh")]


def key(item: Item) -> tuple[int, int]:
    return (item[0], item[2])


def sorted_items(oracle: dict[int, Item]) -> list[Item]:
    return sorted(oracle.values(), key=key)


def brute_overlapping(items: list[Item], from_ns: int | None, to_ns: int | None) -> list[Item]:
    """The definition, written independently: [min, max] meets [from, to)."""
    if from_ns is not None and to_ns is not None and from_ns >= to_ns:
        return []
    return sorted(
        (
            item
            for item in items
            if (to_ns is None or item[0] < to_ns) and (from_ns is None or item[1] >= from_ns)
        ),
        key=key,
    )


def brute_ending_before(items: list[Item], cutoff_ns: int) -> list[Item]:
    return sorted((item for item in items if item[1] < cutoff_ns), key=key)


def avl_height_bound(n: int) -> float:
    # An AVL tree of n nodes has height < 1.4405*log2(n+2) - 0.3277 (height counts levels).
    return 1.44 * math.log2(n + 2)


def build(items: list[Item]) -> IntervalTree:
    tree = IntervalTree()
    for item in items:
        tree.insert(*item)
    return tree


def random_blocks(rng: random.Random, n: int, span_ns: int = 10**6) -> list[Item]:
    """Blocks with random starts and widths, many overlapping, some sharing a min_ts."""
    blocks = []
    for block_id in range(n):
        min_ts = rng.randrange(-span_ns, span_ns)
        width = rng.choice([0, rng.randrange(1, 100), rng.randrange(1, span_ns // 10)])
        blocks.append((min_ts, min_ts + width, block_id))
    return blocks


# --- shape: insertion orders, height bound, order ----------------------------------------------


@pytest.mark.parametrize("order", ["monotonic", "reverse", "random", "equal_min_ts"])
def test_insert_orders_keep_avl_shape_and_key_order(order: str) -> None:
    n = 3000
    rng = random.Random(7)
    if order == "equal_min_ts":
        # All blocks start at the same instant: the block id alone orders them.
        items = [(5, 5 + rng.randrange(1000), block_id) for block_id in range(n)]
        rng.shuffle(items)
    else:
        items = [(ts * 1000, ts * 1000 + 999, ts) for ts in range(n)]
        if order == "reverse":
            items.reverse()
        elif order == "random":
            rng.shuffle(items)
    tree = IntervalTree()
    for count, item in enumerate(items, start=1):
        tree.insert(*item)
        assert tree.height() <= avl_height_bound(count), (order, count, tree.height())
        if count % 500 == 0:
            tree.check_invariants()
    tree.check_invariants()
    assert len(tree) == n
    assert list(tree) == sorted(items, key=key)


def test_empty_tree() -> None:
    tree = IntervalTree()
    tree.check_invariants()
    assert len(tree) == 0
    assert tree.height() == 0
    assert list(tree) == []
    assert tree.overlapping(None, None) == []
    assert tree.ending_before(10**18) == []
    assert tree.remove(0, 0) is False


def test_extreme_timestamps() -> None:
    items = [(-(2**63), -(2**63), 1), (-(2**63), 2**63, 2), (2**63, 2**63, 3), (0, 0, 4)]
    tree = build(items)
    tree.check_invariants()
    assert list(tree) == sorted(items, key=key)
    assert tree.overlapping(2**63, None) == [items[1], items[2]]
    assert tree.overlapping(None, -(2**63) + 1) == [items[0], items[1]]
    assert tree.ending_before(2**63) == [items[0], items[3]]


# --- deletions --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_retention_interleaved_with_sealing(seed: int) -> None:
    """Seal new blocks at the head while retention drops the oldest ones from the tail."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    tree = IntervalTree()
    oracle: dict[int, Item] = {}
    next_id = 0
    now_ns = 0
    for step in range(4000):
        if rng.random() < 0.55 or not oracle:
            # Blocks are sealed roughly in time order; late logs stretch some back in time.
            min_ts = now_ns - rng.randrange(0, 5000)
            item = (min_ts, now_ns + rng.randrange(0, 2000), next_id)
            tree.insert(*item)
            oracle[next_id] = item
            next_id += 1
            now_ns += rng.randrange(1, 1000)
        else:
            oldest = sorted_items(oracle)[0]
            assert tree.remove(oldest[0], oldest[2]) is True, f"seed={seed} step={step}"
            del oracle[oldest[2]]
        if step % 400 == 0:
            tree.check_invariants()
            assert tree.height() <= avl_height_bound(len(tree)), f"seed={seed} step={step}"
    tree.check_invariants()
    assert list(tree) == sorted_items(oracle), f"seed={seed}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_inserts_and_deletes(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    blocks = random_blocks(rng, 3000)
    tree = IntervalTree()
    oracle: dict[int, Item] = {}
    pending = list(blocks)
    rng.shuffle(pending)
    for step in range(6000):
        if pending and (rng.random() < 0.6 or not oracle):
            item = pending.pop()
            tree.insert(*item)
            oracle[item[2]] = item
        elif oracle:
            victim = oracle[rng.choice(list(oracle))]
            assert tree.remove(victim[0], victim[2]) is True, f"seed={seed} step={step}"
            del oracle[victim[2]]
            # Removing it again, or under a wrong min_ts, finds nothing and changes nothing.
            assert tree.remove(victim[0], victim[2]) is False, f"seed={seed} step={step}"
        if oracle and rng.random() < 0.1:
            present = oracle[rng.choice(list(oracle))]
            assert tree.remove(present[0] + 1, present[2]) is False, f"seed={seed} step={step}"
        assert len(tree) == len(oracle), f"seed={seed} step={step}"
        if step % 500 == 0:
            tree.check_invariants()
    tree.check_invariants()
    assert tree.height() <= avl_height_bound(len(tree))
    assert list(tree) == sorted_items(oracle), f"seed={seed}"
    # Drain completely: the tree must shrink back to nothing while staying valid.
    for item in sorted_items(oracle):
        assert tree.remove(item[0], item[2]) is True
    tree.check_invariants()
    assert len(tree) == 0 and tree.height() == 0 and list(tree) == []


# --- queries ----------------------------------------------------------------------------------


def test_overlapping_boundaries() -> None:
    tree = build([(10, 20, 1)])
    block = [(10, 20, 1)]
    assert tree.overlapping(20, None) == block  # from == max_ts counts (closed interval end)
    assert tree.overlapping(21, None) == []
    assert tree.overlapping(None, 10) == []  # to == min_ts does not (half-open window)
    assert tree.overlapping(None, 11) == block
    assert tree.overlapping(20, 21) == block  # point window at the block's end
    assert tree.overlapping(10, 11) == block  # point window at the block's start
    assert tree.overlapping(9, 10) == []  # point window just before the block
    assert tree.overlapping(15, 15) == []  # empty window
    assert tree.overlapping(20, 10) == []  # reversed window is empty, not "everything between"
    assert tree.overlapping(0, 100) == block
    assert tree.overlapping(12, 13) == block  # window strictly inside the block
    assert tree.overlapping(None, None) == block


def test_ending_before_boundaries() -> None:
    items = [(0, 9, 1), (0, 10, 2), (5, 11, 3), (10, 10, 4)]
    tree = build(items)
    assert tree.ending_before(10) == [(0, 9, 1)]  # max_ts == cutoff is not "before"
    assert tree.ending_before(11) == [(0, 9, 1), (0, 10, 2), (10, 10, 4)]
    assert tree.ending_before(0) == []
    assert tree.ending_before(12) == sorted(items, key=key)


def window_bounds(rng: random.Random, items: list[Item]) -> tuple[int | None, int | None]:
    """Random windows biased to the interesting cases: block edges, points, empty, unbounded."""

    def edge() -> int:
        if items and rng.random() < 0.5:
            item = rng.choice(items)
            return item[rng.choice([0, 1])] + rng.choice([-1, 0, 0, 1])
        return rng.randrange(-1_200_000, 1_200_000)

    shape = rng.randrange(6)
    if shape == 0:
        return None, edge()
    if shape == 1:
        return edge(), None
    if shape == 2:
        start = edge()
        return start, start + 1  # point window
    if shape == 3:
        start = edge()
        return start, start - rng.randrange(0, 3)  # empty or reversed
    a, b = edge(), edge()
    return min(a, b), max(a, b) + rng.randrange(0, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_queries_match_brute_force(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    items = random_blocks(rng, 1500)
    tree = build(items)
    assert tree.overlapping(None, None) == sorted(items, key=key)
    for _ in range(400):
        from_ns, to_ns = window_bounds(rng, items)
        assert tree.overlapping(from_ns, to_ns) == brute_overlapping(items, from_ns, to_ns), (
            f"seed={seed} window=[{from_ns}, {to_ns})"
        )
        cutoff_ns = window_bounds(rng, items)[0] or 0
        assert tree.ending_before(cutoff_ns) == brute_ending_before(items, cutoff_ns), (
            f"seed={seed} cutoff={cutoff_ns}"
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_random_operations(seed: int) -> None:
    """Inserts, removes (present and absent) and queries in random order against the oracle."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    tree = IntervalTree()
    oracle: dict[int, Item] = {}
    # A small id and time space so duplicates, shared min_ts and re-inserts happen often.
    for step in range(3000):
        op = rng.randrange(4)
        context = f"seed={seed} step={step} op={op}"
        block_id = rng.randrange(300)
        if op == 0:
            min_ts = rng.randrange(-500, 500)
            item = (min_ts, min_ts + rng.randrange(0, 300), block_id)
            if block_id in oracle:
                with pytest.raises(ValueError):
                    tree.insert(*item)
            else:
                tree.insert(*item)
                oracle[block_id] = item
        elif op == 1:
            min_ts = oracle[block_id][0] if block_id in oracle else rng.randrange(-500, 500)
            expected = oracle.get(block_id, (None,))[0] == min_ts
            assert tree.remove(min_ts, block_id) is expected, context
            if expected:
                del oracle[block_id]
        elif op == 2:
            items = list(oracle.values())
            from_ns, to_ns = window_bounds(rng, items)
            got = tree.overlapping(from_ns, to_ns)
            assert got == brute_overlapping(items, from_ns, to_ns), context
        else:
            cutoff_ns = rng.randrange(-600, 900)
            got = tree.ending_before(cutoff_ns)
            assert got == brute_ending_before(list(oracle.values()), cutoff_ns), context
        assert len(tree) == len(oracle), context
        if step % 300 == 0:
            tree.check_invariants()
    tree.check_invariants()
    assert list(tree) == sorted_items(oracle), f"seed={seed}"


class IntervalTreeMachine(RuleBasedStateMachine):
    """Hypothesis drives the operations; it prints the failing sequence and its seed itself."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = IntervalTree()
        self.oracle: dict[int, Item] = {}

    @rule(
        min_ts=st.integers(-50, 50),
        width=st.integers(0, 30),
        block_id=st.integers(0, 40),
    )
    def insert(self, min_ts: int, width: int, block_id: int) -> None:
        item = (min_ts, min_ts + width, block_id)
        if block_id in self.oracle:
            with pytest.raises(ValueError):
                self.tree.insert(*item)
        else:
            self.tree.insert(*item)
            self.oracle[block_id] = item

    @precondition(lambda self: bool(self.oracle))
    @rule(data=st.data())
    def remove_present(self, data: st.DataObject) -> None:
        block_id = data.draw(st.sampled_from(sorted(self.oracle)))
        min_ts = self.oracle.pop(block_id)[0]
        assert self.tree.remove(min_ts, block_id) is True

    @rule(min_ts=st.integers(-50, 50), block_id=st.integers(0, 40))
    def remove_any(self, min_ts: int, block_id: int) -> None:
        expected = block_id in self.oracle and self.oracle[block_id][0] == min_ts
        assert self.tree.remove(min_ts, block_id) is expected
        if expected:
            del self.oracle[block_id]

    @rule(
        from_ns=st.none() | st.integers(-60, 90),
        to_ns=st.none() | st.integers(-60, 90),
    )
    def overlapping(self, from_ns: int | None, to_ns: int | None) -> None:
        expected = brute_overlapping(list(self.oracle.values()), from_ns, to_ns)
        assert self.tree.overlapping(from_ns, to_ns) == expected

    @rule(cutoff_ns=st.integers(-60, 90))
    def ending_before(self, cutoff_ns: int) -> None:
        expected = brute_ending_before(list(self.oracle.values()), cutoff_ns)
        assert self.tree.ending_before(cutoff_ns) == expected

    @invariant()
    def matches_oracle(self) -> None:
        self.tree.check_invariants()
        assert len(self.tree) == len(self.oracle)
        assert list(self.tree) == sorted_items(self.oracle)


IntervalTreeMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,  # 2 shared cores: a slow step is not a bug
    suppress_health_check=[HealthCheck.too_slow],
)
test_interval_tree_state_machine = IntervalTreeMachine.TestCase


# --- pruning: narrow queries on a big tree touch O(log n + k) nodes ----------------------------


@pytest.fixture(scope="module")
def big_tree() -> tuple[IntervalTree, list[Item]]:
    """100,000 blocks sealed in time order, each ~1 ms long, a few stretched back by late logs."""
    rng = random.Random(42)
    items = []
    for block_id in range(100_000):
        start_ns = block_id * 1_000_000
        late_ns = rng.randrange(0, 3_000_000) if rng.random() < 0.05 else 0
        items.append((start_ns - late_ns, start_ns + 999_999, block_id))
    tree = IntervalTree.from_items(items)
    return tree, items


def test_from_items_builds_valid_tree_of_100k(big_tree: tuple[IntervalTree, list[Item]]) -> None:
    tree, items = big_tree
    tree.check_invariants()
    assert len(tree) == len(items)
    assert tree.height() <= avl_height_bound(len(items))
    assert list(tree) == sorted(items, key=key)


@pytest.mark.parametrize("seed", SEEDS)
def test_narrow_overlapping_query_prunes(
    big_tree: tuple[IntervalTree, list[Item]], seed: int
) -> None:
    print(f"seed={seed}")
    tree, items = big_tree
    rng = random.Random(seed)
    height = tree.height()
    for _ in range(50):
        from_ns = rng.randrange(0, 100_000 * 1_000_000)
        to_ns = from_ns + rng.randrange(1, 5_000_000)
        got = tree.overlapping(from_ns, to_ns)
        # Brute force over the slice the window can touch (blocks start <= 3 ms early).
        first = max(0, from_ns // 1_000_000 - 5)
        candidates = items[first : to_ns // 1_000_000 + 5]
        assert got == brute_overlapping(candidates, from_ns, to_ns), f"seed={seed}"
        assert got, "every window inside the covered range meets some block"
        # Unvisited-but-reported is impossible; non-reported visits lie on the two boundary
        # search paths (plus one pruned child per path node), so 3 paths' worth is generous.
        # Without subtree-max pruning the walk would touch ~from_ns/1e6 nodes (tens of thousands).
        assert tree.last_visited_nodes <= 3 * height + 2 * len(got), (
            f"seed={seed} window=[{from_ns}, {to_ns}) visited={tree.last_visited_nodes} "
            f"k={len(got)} height={height}"
        )


def test_ending_before_visits_little_more_than_the_answer(
    big_tree: tuple[IntervalTree, list[Item]],
) -> None:
    tree, items = big_tree
    cutoff_ns = 1_000 * 1_000_000
    got = tree.ending_before(cutoff_ns)
    assert got == brute_ending_before(items[:1_100], cutoff_ns)
    # Every visit is an answer, a straddler, or on the search path of the cutoff.
    assert tree.last_visited_nodes <= len(got) + 2 * tree.height() + 10


# --- bulk load and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 31, 32, 33, 100])
def test_from_items_any_order_any_size(n: int) -> None:
    rng = random.Random(n)
    items = random_blocks(rng, n, span_ns=50)  # tiny span: many equal min_ts
    rng.shuffle(items)
    tree = IntervalTree.from_items(iter(items))  # any iterable, consumed once
    tree.check_invariants()
    assert list(tree) == sorted(items, key=key)
    # The bulk-loaded tree is an ordinary tree afterwards.
    tree.insert(0, 0, n + 1)
    if items:
        assert tree.remove(items[0][0], items[0][2]) is True
    tree.check_invariants()


def test_duplicate_insert_raises_and_changes_nothing() -> None:
    tree = build([(10, 20, 1), (30, 40, 2)])
    with pytest.raises(ValueError, match=r"block 1 is already in the time index \(min_ts=10\)"):
        tree.insert(10, 25, 1)
    # Same block id under another min_ts is the same block indexed twice: also refused.
    with pytest.raises(ValueError, match=r"block 2 is already in the time index"):
        tree.insert(5, 6, 2)
    tree.check_invariants()
    assert list(tree) == [(10, 20, 1), (30, 40, 2)]


def test_bad_interval_raises_and_changes_nothing() -> None:
    tree = build([(10, 20, 1)])
    with pytest.raises(ValueError, match=r"block 7 has min_ts=21 > max_ts=20"):
        tree.insert(21, 20, 7)
    assert list(tree) == [(10, 20, 1)]
    tree.insert(21, 21, 7)  # a zero-length block is fine
    tree.check_invariants()


def test_non_int_fields_raise_type_error() -> None:
    tree = IntervalTree()
    with pytest.raises(TypeError, match=r"min_ts is 1.5 of type float"):
        tree.insert(1.5, 2, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"block_id is True of type bool"):
        tree.insert(1, 2, True)
    assert len(tree) == 0


def test_from_items_rejects_duplicates_and_bad_intervals() -> None:
    with pytest.raises(ValueError, match=r"block 3 appears twice \(min_ts=1 and min_ts=2\)"):
        IntervalTree.from_items([(1, 2, 3), (2, 3, 3)])
    with pytest.raises(ValueError, match=r"block 4 has min_ts=9 > max_ts=8"):
        IntervalTree.from_items([(1, 2, 3), (9, 8, 4)])


def test_iteration_detects_mutation() -> None:
    tree = build([(1, 1, 1), (2, 2, 2), (3, 3, 3)])
    with pytest.raises(RuntimeError, match="changed during iteration"):
        for item in tree:
            # Bounded, so a missing guard fails pytest.raises instead of looping forever.
            if item[2] < 10:
                tree.insert(item[0] + 10, item[0] + 10, item[2] + 10)


# --- check_invariants can fail: corrupt a valid tree, one invariant at a time ----------------


def corrupted(kind: str) -> IntervalTree:
    tree = IntervalTree.from_items((ts, ts + 5, ts) for ts in range(15))  # perfect, height 4
    root = tree._root
    assert root is not None and root.left is not None and root.right is not None
    if kind == "BST order":
        root.left.min_ts, root.right.min_ts = root.right.min_ts, root.left.min_ts
    elif kind == "stored height":
        root.left.height += 1
    elif kind == "AVL balance":
        # Cut the right subtree down to a leaf (fixing its bookkeeping so only balance breaks).
        root.right.left = root.right.right = None
        root.right.height = 1
        root.right.subtree_max_ts = root.right.max_ts
        root.height = 1 + root.left.height
        root.subtree_max_ts = max(root.max_ts, root.left.subtree_max_ts, root.right.max_ts)
        tree._min_ts_by_block_id = {i[2]: i[0] for i in _items(root)}
    elif kind == "subtree max":
        root.left.subtree_max_ts -= 1
    elif kind == "size/membership":
        tree._min_ts_by_block_id[999] = 0
    return tree


def _walk(node: _Node | None) -> Iterator[_Node]:
    if node is not None:
        yield from _walk(node.left)
        yield node
        yield from _walk(node.right)


def _items(node: _Node | None) -> list[Item]:
    return [(n.min_ts, n.max_ts, n.block_id) for n in _walk(node)]


@pytest.mark.parametrize(
    "kind", ["BST order", "stored height", "AVL balance", "subtree max", "size/membership"]
)
def test_check_invariants_names_the_broken_invariant(kind: str) -> None:
    IntervalTree.from_items((ts, ts + 5, ts) for ts in range(15)).check_invariants()
    with pytest.raises(RuntimeError, match=f"^{kind} broken"):
        corrupted(kind).check_invariants()
