"""The embedded "shapes" data set: format, determinism, cache, long tail, captions, enhanced variant."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import inflect
import numpy as np
import pytest

from difffeat_tune._errors import ConfigError, DataError
from difffeat_tune._paths import cache_dir
from difffeat_tune.data import Dataset, ShapesConfig, available_datasets, load_dataset, load_shapes
from difffeat_tune.data.shapes import GENERATOR_VERSION, rare_categories

SMALL = {"n_train": 120, "n_val": 80, "n_test": 80}
CFG = ShapesConfig()


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dataset, Dataset]]:
    """The default-size data set and its enhanced variant, generated once for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFFEAT_TUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_shapes(), load_shapes(enhanced=True)


@pytest.fixture()
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("DIFFFEAT_TUNE_CACHE", str(tmp_path))
    return tmp_path


def _named(captions: tuple[str, ...]) -> np.ndarray:
    """``[N, C]``: whether each caption names each category (any synonym, singular or plural)."""
    engine = inflect.engine()
    patterns = [re.compile(r"\b(" + "|".join(re.escape(w) for s in synonyms for w in (s, engine.plural_noun(s)))
                           + r")\b", re.IGNORECASE) for synonyms in CFG.synonyms]
    return np.array([[bool(p.search(c)) for p in patterns] for c in captions])


def _cache_files(cache) -> list:
    return sorted((cache / "data").glob("shapes-*.npz"))


def test_splits_hold_64px_rgb_images_int8_labels_captions_and_ids(cache):
    data = load_shapes(**SMALL)
    assert data.task == "multilabel" and data.label_names == CFG.categories
    assert 12 <= len(data.label_names) <= 16
    for name, n in (("train", 120), ("val", 80), ("test", 80)):
        split = data.split(name)
        assert len(split) == n and split.ids[7] == f"shapes-{name}-000007"
        assert split.labels.dtype == np.int8 and set(np.unique(split.labels)) <= {0, 1}
        assert (split.labels.sum(axis=1) >= 1).all() and (split.labels.sum(axis=1) <= CFG.max_labels).all()
        image = split.images.load(0)
        assert image.mode == "RGB" and image.size == (64, 64)
        assert all(isinstance(c, str) and c for c in split.captions)


def test_same_seed_gives_same_fingerprint_and_pixels(cache):
    a = load_shapes(seed=3, cache=False, **SMALL)
    b = load_shapes(seed=3, cache=False, **SMALL)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(np.asarray(a.split("val").images.load(5)), np.asarray(b.split("val").images.load(5)))


def test_other_seed_gives_different_data(cache):
    a = load_shapes(seed=3, cache=False, **SMALL)
    b = load_shapes(seed=4, cache=False, **SMALL)
    assert a.fingerprint() != b.fingerprint()
    assert not np.array_equal(np.asarray(a.split("train").images.load(0)),
                              np.asarray(b.split("train").images.load(0)))


def test_a_split_does_not_depend_on_the_other_splits_sizes(cache):
    a = load_shapes(seed=1, cache=False, n_train=120, n_val=80, n_test=80)
    b = load_shapes(seed=1, cache=False, n_train=120, n_val=100, n_test=90)
    assert a.split("train").captions == b.split("train").captions
    assert np.array_equal(a.split("train").labels, b.split("train").labels)


def test_second_load_reads_the_cache(cache, caplog):
    caplog.set_level(logging.INFO, logger="difffeat_tune.data.shapes")
    first = load_shapes(**SMALL)
    assert len(_cache_files(cache)) == 1
    assert any("generated shapes data" in r.message for r in caplog.records)
    caplog.clear()
    second = load_shapes(**SMALL)
    assert not any("generated shapes data" in r.message for r in caplog.records)
    assert second.fingerprint() == first.fingerprint()
    assert np.array_equal(np.asarray(first.split("test").images.load(3)),
                          np.asarray(second.split("test").images.load(3)))


def test_cache_lives_under_the_cache_dir_and_leaves_no_temp_files(cache):
    load_shapes(**SMALL)
    assert [p.parent for p in _cache_files(cache)] == [cache_dir("data")]
    assert not list((cache / "data").glob("*.tmp"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_is_regenerated(cache, caplog, damage):
    reference = load_shapes(**SMALL)
    (path,) = _cache_files(cache)
    content = path.read_bytes()
    path.write_bytes({"garbage": b"not a zip file" * 100, "truncated": content[: len(content) // 2],
                      "empty": b""}[damage])
    caplog.set_level(logging.INFO, logger="difffeat_tune.data.shapes")
    again = load_shapes(**SMALL)
    assert any("regenerating" in r.message for r in caplog.records)
    assert any("generated shapes data" in r.message for r in caplog.records)
    assert again.fingerprint() == reference.fingerprint()
    assert path.stat().st_size == len(content)  # rewritten whole


def test_cache_file_of_other_data_is_not_trusted(cache, caplog):
    load_shapes(seed=0, **SMALL)
    (seed0,) = _cache_files(cache)
    fresh = load_shapes(seed=1, cache=False, **SMALL)
    seed1 = seed0.with_name(seed0.name.replace("seed0", "seed1"))
    seed1.write_bytes(seed0.read_bytes())  # right name, wrong content
    caplog.set_level(logging.WARNING, logger="difffeat_tune.data.shapes")
    loaded = load_shapes(seed=1, **SMALL)
    assert any("regenerating" in r.message for r in caplog.records)
    assert loaded.fingerprint() == fresh.fingerprint()


def test_cache_false_writes_nothing(cache):
    load_shapes(cache=False, **SMALL)
    assert _cache_files(cache) == []


def test_options_record_seed_sizes_enhanced_and_generator_version(cache):
    data = load_shapes(seed=2, enhanced=True, **SMALL)
    assert data.name == "shapes-enhanced"
    assert {k: data.options[k] for k in ("seed", "n_train", "n_val", "n_test", "enhanced", "generator_version")} == {
        "seed": 2, "n_train": 120, "n_val": 80, "n_test": 80, "enhanced": True,
        "generator_version": GENERATOR_VERSION}


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"n_val": -5}, {"n_test": 2.5}, {"seed": -1}])
def test_bad_sizes_or_seed_raise_data_error(cache, bad):
    with pytest.raises(DataError):
        load_shapes(cache=False, **{**SMALL, **bad})


def test_split_too_small_for_min_positives_raises_data_error(cache):
    with pytest.raises(DataError, match="too small"):
        load_shapes(cache=False, n_train=10, n_val=10, n_test=10)


def test_category_frequencies_are_long_tailed(default_data):
    train = default_data[0].split("train").labels
    prevalence = train.mean(axis=0)
    assert prevalence.max() > 0.3  # a few frequent categories
    assert (prevalence < 0.02).sum() >= 2  # several rare ones, like COCO's
    assert (prevalence < CFG.rare_fraction).sum() >= 1


def test_every_category_has_positives_in_every_split(default_data):
    for split in default_data[0].splits.values():
        assert (split.labels.sum(axis=0) >= CFG.min_positives).all(), split.name


def test_captions_name_only_some_of_the_objects(default_data):
    split = default_data[0].split("train")
    named = _named(split.captions)
    positive = split.labels.astype(bool)
    assert 0.3 < named[positive].mean() < 0.8
    assert (named & positive).sum(axis=0).min() > 0  # every category gets mentioned sometimes
    assert ((named & positive).sum(axis=0) < positive.sum(axis=0)).all()  # ... and missed sometimes


def test_captions_never_name_an_absent_category(default_data):
    split = default_data[0].split("train")
    named = _named(split.captions)
    assert not (named & (split.labels == 0)).any()


def test_captions_vary_in_wording_and_mention_distractors(default_data):
    captions = default_data[0].split("train").captions
    assert len(set(captions)) > 0.8 * len(captions)
    assert len({" ".join(c.split()[:2]) for c in captions}) >= 8  # several templates
    assert sum(any(re.search(rf"\b{d}\b", c) for d in CFG.distractors) for c in captions) > 0.05 * len(captions)
    assert any(re.search(r"\b(two|three|some)\b", c) for c in captions)  # counts
    assert any(re.search(r"\bon the (left|right)\b", c) for c in captions)  # positions


def test_enhanced_captions_append_the_plural_sentence_for_every_label(default_data):
    base, enhanced = default_data
    engine = inflect.engine()
    for name in ("train", "test"):
        b, e = base.split(name), enhanced.split(name)
        assert np.array_equal(b.labels, e.labels) and b.ids == e.ids
        for caption, extended, row in zip(b.captions, e.captions, b.labels):
            plurals = ", ".join(engine.plural_noun(base.label_names[c]) for c in np.flatnonzero(row))
            assert extended.startswith(caption + f" In this photo, there are also some {plurals}.")


def test_enhanced_rare_sentence_names_exactly_the_rare_categories(default_data):
    base, enhanced = default_data
    train = base.split("train").labels
    rare = [c for c in range(train.shape[1]) if train[:, c].mean() < 0.01]
    assert rare  # seed 0 has categories under 1%
    engine = inflect.engine()
    for name in ("train", "val"):
        split = enhanced.split(name)
        for caption, row in zip(split.captions, split.labels):
            present = [c for c in np.flatnonzero(row) if c in rare]
            sentence = "In the photo's subtle background, you can also spot some"
            if present:
                names = ", ".join(engine.plural_noun(base.label_names[c]) for c in present)
                assert caption.endswith(f" {sentence} {names}.")
            else:
                assert sentence not in caption


def test_rare_categories_come_from_the_given_labels():
    labels = np.zeros((1000, 3), dtype=np.int8)
    labels[:5, 0] = 1  # 0.5%
    labels[:10, 1] = 1  # 1.0%: not under 1%
    labels[:500, 2] = 1
    assert rare_categories(labels, 0.01) == (True, False, False)


def test_enhanced_and_base_data_have_different_fingerprints(default_data):
    base, enhanced = default_data
    assert base.fingerprint() != enhanced.fingerprint()


def test_load_dataset_gives_the_embedded_data_by_name(cache):
    assert set(available_datasets()) >= {"shapes", "shapes-enhanced"}
    plain = load_dataset("shapes", **SMALL)
    enhanced = load_dataset("shapes-enhanced", **SMALL)
    assert plain.name == "shapes" and enhanced.name == "shapes-enhanced"
    assert enhanced.options["enhanced"] is True


def test_load_dataset_unknown_name_lists_the_available_names(cache):
    with pytest.raises(DataError, match="shapes, shapes-enhanced"):
        load_dataset("no-such-data")


def test_load_dataset_rejects_unknown_or_contradictory_options(cache):
    with pytest.raises(ConfigError, match="bogus"):
        load_dataset("shapes", bogus=1)
    with pytest.raises(ConfigError, match="enhanced"):
        load_dataset("shapes-enhanced", enhanced=False)
