"""Slice datasets: body-fraction filter, 2.5D channels, paired augmentation drawn once, unpaired partners; all read
from the real on-disk slice cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtranslate.core.config import RunConfig
from medtranslate.core.errors import ConfigError, InputError
from medtranslate.data.cache import CachedCase, open_cached, write_cached
from medtranslate.data.slices import PreparedCase, PreparedScan, SliceDataset, context_indices


@pytest.fixture
def case(tmp_path):
    """Make a case in a slice cache below tmp_path: random source, target = 0.5 * source, body on some slices."""

    def make(cid: str, depth: int = 6, body_slices: tuple[int, ...] = (1, 2, 3, 4)) -> CachedCase:
        g = torch.Generator().manual_seed(len(cid))
        source = torch.rand(1, 20, 24, depth, generator=g) * 2 - 1
        mask = torch.zeros(1, 20, 24, depth, dtype=torch.bool)
        for z in body_slices:
            mask[0, 2:18, 2:22, z] = True
        prepared = PreparedCase(cid, source, 0.5 * source, mask, pair=None, source_intensity=None)
        return write_cached(prepared, tmp_path / "cache" / f"{cid}-{depth}-{len(body_slices)}")

    return make


def volume(c: CachedCase, name: str = "source") -> torch.Tensor:
    """The cached (Z, X, Y) array back as the (X, Y, Z) volume it was made from."""
    return torch.from_numpy(np.array(c.array(name))).permute(1, 2, 0)


def config(task: str = "mr2ct", kind: str = "pix2pix", **data) -> RunConfig:
    # a valid model for 16-pixel patches: a 3-level U-Net, a 2-layer PatchGAN (config.py refuses what nets cannot take)
    return RunConfig.from_dict(
        {
            "data": {"root": "x", "patch_size": 16, **data},
            "model": {"kind": kind, "task": task, "num_downs": 3, "d_layers": 2},
        }
    )


def test_slices_with_too_little_body_are_skipped(case):
    ds = SliceDataset([case("a")], config(min_body_fraction=0.3), seed=0)
    assert sorted(z for _, z in ds.index) == [1, 2, 3, 4]
    with pytest.raises(InputError, match="min_body_fraction"):
        SliceDataset([case("a", body_slices=())], config(), seed=0)


def test_context_slices_stack_neighbours_and_replicate_at_the_ends(case):
    assert context_indices(0, 1, 4) == [0, 0, 1]
    assert context_indices(3, 2, 4) == [1, 2, 3, 3, 3]
    c = case("a")
    stack = c.slices("source", context_indices(0, 1, c.shape[0]))
    vol = volume(c)
    assert stack.shape == (3, 20, 24)
    assert torch.equal(stack[0], vol[:, :, 0]) and torch.equal(stack[1], vol[:, :, 0])
    assert torch.equal(stack[2], vol[:, :, 1])


def test_the_cache_gives_back_what_was_written_and_its_body_index(case):
    c = case("a", depth=7, body_slices=(2, 5))
    assert c.shape == (7, 20, 24)
    assert (
        np.allclose(c.body_fraction[[2, 5]], 16 * 20 / (20 * 24), atol=1e-6) and c.body_fraction[[0, 1, 3]].sum() == 0
    )
    assert torch.equal(volume(c, "target"), 0.5 * volume(c))
    again = open_cached(c.folder)  # what a second run (or another rank) finds
    assert again.case_id == "a" and again.shape == c.shape and np.array_equal(again.body_fraction, c.body_fraction)
    with pytest.raises(FileNotFoundError):
        open_cached(c.folder.parent / "not-there")
    assert not [p for p in c.folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_slices_are_read_at_their_offset_in_any_order_and_a_short_file_is_reported(case):
    c = case("a", depth=7, body_slices=(2, 5))
    for name in ("source", "mask"):  # float32 and uint8 arrays
        zs = [5, 2, 2, 6]
        expected = torch.from_numpy(np.array(c.array(name))[zs].astype(np.float32))
        assert torch.equal(c.slices(name, zs), expected)
    with pytest.raises(InputError, match="source.npy: this slice cache entry of case 'a' was damaged"):
        c.slices("source", [7])
    data = (c.folder / "target.npy").read_bytes()
    (c.folder / "target.npy").write_bytes(data[: len(data) - 100])  # cut short after the entry was opened
    assert torch.equal(c.slices("target", [0])[0], 0.5 * volume(c)[:, :, 0])
    with pytest.raises(InputError, match="target.npy: this slice cache entry of case 'a' was damaged"):
        c.slices("target", [6])


@pytest.mark.parametrize("context", [0, 2])
def test_paired_augmentation_moves_source_and_target_alike(case, context):
    ds = SliceDataset([case("a")], config(context=context, rotate_deg=20.0, scale=0.2), seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["source"].shape == (2 * context + 1, 16, 16) and item["target"].shape == (1, 16, 16)
        centre = item["source"][context : context + 1]
        # target = 0.5 * source before augmentation; interpolation is linear, so it must hold after it too
        # (away from the padded border, where the background value -1 is not 0.5 * -1)
        inner = (slice(None), slice(4, 12), slice(4, 12))
        assert torch.allclose(item["target"][inner], 0.5 * centre[inner], atol=1e-5)


def test_body_crops_are_centred_on_the_body_where_uniform_crops_mostly_miss_it(tmp_path):
    def small_body(cid: str) -> CachedCase:
        """64 x 64 slices, -1 outside a 6 x 6 body square (+1) away from the edges; the target is the same image."""
        image = -torch.ones(1, 64, 64, 5)
        image[0, 30:36, 40:46, :] = 1.0
        prepared = PreparedCase(cid, image, image.clone(), image > 0, pair=None, source_intensity=None)
        return write_cached(prepared, tmp_path / cid)

    a, b = small_body("a"), small_body("bb")
    cfg = config(augment=False, min_body_fraction=0.001, crop="body")
    paired, unpaired = SliceDataset([a, b], cfg, seed=0), SliceDataset([a, b], cfg, seed=0, targets=[a, b])
    for ds in (paired, unpaired):
        for i in range(len(ds)):
            item = ds[i]
            assert float(item["source"][0, 8, 8]) == 1.0 and float(item["target"][0, 8, 8]) == 1.0
    uniform = SliceDataset([a, b], config(augment=False, min_body_fraction=0.001, crop="uniform"), seed=0)
    hits = sum(float(uniform[i]["source"].max()) == 1.0 for i in range(len(uniform)))
    assert hits < len(uniform) / 2  # about 6 % of uniform 16-pixel crops of this slice touch the square


def test_unpaired_targets_come_from_another_case(case):
    a, b = case("a"), case("bb")
    ds = SliceDataset([a, b], config(augment=False, patch_size=24), seed=1, targets=[a, b])
    for i in range(len(ds)):
        ci, z = ds.index[i]
        own = ds.cases[ci].slices("target", [z])[0]
        target = ds[i]["target"][0, 2:22, :]  # undo the 2-pixel padding of the 20-pixel axis to 24
        assert not torch.allclose(target, own)
        # the source's own body mask comes along (for CycleGAN's body-outline loss), cropped like the source
        assert torch.equal(ds[i]["mask"][0, 2:22, :], ds.cases[ci].slices("mask", [z])[0])
    rotated = SliceDataset([a, b], config(rotate_deg=30.0, scale=0.0, patch_size=24), seed=1, targets=[a, b])
    for i in range(len(ds)):
        m = rotated[i]["mask"]
        assert m.shape == (1, 24, 24) and float(m.min()) >= 0 and float(m.max()) <= 1  # background padded as 0
        assert float(m.sum()) == pytest.approx(float(ds[i]["mask"].sum()), rel=0.1)  # turned, not lost
    with pytest.raises(InputError, match="at least 2 subjects"):
        SliceDataset([a], config(), seed=0, targets=[a])


def test_unpaired_partners_come_from_the_target_cohort_of_other_subjects(case, tmp_path):
    # cohorts: source scans hold a source and their own mask, target scans a target on their own grid and depth
    def scan(cid: str, slot: str, shape: tuple[int, int, int], value: float):
        image = torch.full((1, *shape), value)
        mask = torch.ones((1, *shape), dtype=torch.bool)
        return write_cached(PreparedScan(cid, slot, image, mask), tmp_path / "scans" / f"{cid}-{slot}")

    sources = [scan("m0", "source", (20, 24, 5), 0.1), scan("both", "source", (20, 24, 5), 0.2)]
    targets = [scan("c0", "target", (30, 22, 7), 0.3), scan("both", "target", (18, 24, 3), 0.4)]
    assert sources[0].arrays == ("mask", "source") and targets[0].arrays == ("mask", "target")
    ds = SliceDataset(sources, config(augment=False, patch_size=24), seed=0, targets=targets)
    assert len(ds) == 10  # source slices only
    drawn = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item, (ci, _) = ds[i], ds.index[i]
            value = round(float(item["target"][0, 12, 12]), 3)
            drawn.add(value)
            assert float(item["source"][0, 12, 12]) == pytest.approx(0.1 if ci == 0 else 0.2)
            if ds.cases[ci].case_id == "both":  # never its own subject's CT while the cohort has another
                assert value == pytest.approx(0.3)
            assert item["target"].shape == (1, 24, 24) and torch.equal(item["mask"][0, 2:22], torch.ones(20, 24))
    assert drawn == {0.3, 0.4}  # both target scans serve as partners


def test_area_partners_match_each_source_slice_to_target_slices_of_similar_body_area(tmp_path):
    def scan(cid: str, slot: str, sides: list[int]):
        """A 24 x 24 scan whose slice z holds a sides[z]-pixel body square, valued sides[z] / 100 on -1."""
        image, mask = -torch.ones(1, 24, 24, len(sides)), torch.zeros(1, 24, 24, len(sides), dtype=torch.bool)
        for z, side in enumerate(sides):
            image[0, :side, :side, z], mask[0, :side, :side, z] = side / 100, True
        return write_cached(PreparedScan(cid, slot, image, mask), tmp_path / f"{cid}-{slot}")

    sources = [scan("mr", "source", [6, 11, 17, 22])]
    target_sides = list(range(4, 24))  # 20 target slices, all areas distinct: each source slice has 2 nearest
    targets = [scan("ct1", "target", target_sides[::2]), scan("ct2", "target", target_sides[1::2])]
    cfg = dict(kind="cyclegan", augment=False, patch_size=24, min_body_fraction=0.01, spacing=[1.0, 1.0, 1.0])
    near = SliceDataset(sources, config(partner="area", **cfg), seed=0, targets=targets)
    anywhere = SliceDataset(sources, config(partner="any", **cfg), seed=0, targets=targets)
    met_near, met_any = set(), set()
    for epoch in range(6):
        near.set_epoch(epoch), anywhere.set_epoch(epoch)
        for i in range(len(near)):
            side = round(float(near[i]["source"].max()) * 100)
            expected = sorted(target_sides, key=lambda t: abs(t * t - side * side))[:2]
            met = round(float(near[i]["target"].max()) * 100)
            assert met in expected, (side, met, expected)
            met_near.add((side, met))
            met_any.add((side, round(float(anywhere[i]["target"].max()) * 100)))
    assert len(met_near) == 8  # both nearest partners of every source slice are drawn
    assert len(met_any) > 16 and any(abs(t - s) > 8 for s, t in met_any)  # any: far partners too
    with pytest.raises(ConfigError, match="data.spacing"):
        config(kind="cyclegan", partner="area")
    with pytest.raises(ConfigError, match="pix2pix learns from pairs"):  # refused, not ignored
        config(partner="area", spacing=[1.0, 1.0, 1.0])


def test_denoising_augmentation_does_not_interpolate_the_noise_away(case):
    # bilinear rotation or scaling averages neighbouring pixels, which smooths noise; for ldct only flips are drawn
    c = case("a")
    for task, exact in (("ldct", True), ("mr2ct", False)):
        ds = SliceDataset([c], config(task), seed=0)
        found = []
        for i in range(len(ds)):
            _, z = ds.index[i]
            found.append(bool(torch.isin(ds[i]["source"], c.slices("source", [z])).all()))
        assert all(found) if exact else not any(found), task


def test_an_item_depends_only_on_seed_epoch_and_index(case):
    a, b = case("a"), case("bb")
    ds = SliceDataset([a, b], config(rotate_deg=20.0, scale=0.2), seed=3, targets=[a, b])
    first = [ds[i] for i in range(len(ds))]
    again = [ds[i] for i in reversed(range(len(ds)))][::-1]  # another order: the same items
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    ds.set_epoch(1)  # the next epoch draws anew
    assert not all(torch.equal(first[i]["source"], ds[i]["source"]) for i in range(len(ds)))
    other = SliceDataset([a, b], config(rotate_deg=20.0, scale=0.2), seed=4, targets=[a, b])
    assert not all(torch.equal(first[i]["source"], other[i]["source"]) for i in range(len(ds)))


def test_data_loader_workers_give_the_same_batches_as_the_main_process(case):
    ds = SliceDataset([case("a"), case("bb")], config(rotate_deg=20.0, scale=0.2), seed=5)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()

    def batches(workers: int) -> list[dict[str, torch.Tensor]]:
        return list(torch.utils.data.DataLoader(ds, batch_size=3, sampler=order, num_workers=workers))

    main, two = batches(0), batches(2)
    assert len(main) == len(two) == -(-len(ds) // 3)
    for x, y in zip(main, two, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_unpaired_cases_beside_the_pairs_warn_unless_the_split_leaves_them_out(tmp_path, tiny_data, caplog):
    import logging
    import shutil

    from medtranslate.core.config import load_config
    from medtranslate.data.slices import discover_pairs

    from .conftest import write_config

    root = tmp_path / "cases"
    shutil.copytree(tiny_data, root)
    (root / "u9").mkdir()
    shutil.copy(root / "s0" / "mr.nii.gz", root / "u9" / "mr.nii.gz")  # an MR-only subject beside the pairs
    cfg = load_config(write_config(tmp_path / "c.yaml", root))
    for split, level in ((True, logging.INFO), (False, logging.WARNING)):
        if not split:  # without a split file the run may well have meant to use it: a warning
            (root / "split.json").unlink()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medtranslate.data.slices"):
            assert sorted(discover_pairs(cfg)) == ["s0", "s1", "s2", "s3"]
        told = [r for r in caplog.records if "without a pair left out" in r.getMessage()]
        assert [r.levelno for r in told] == [level] and "u9" in told[0].getMessage()
