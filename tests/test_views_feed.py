"""The trainer's feed (issue 3's speed bar): batch gathering, seeded batch views, uint8 -> normalised views."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avsl_core import train as T
from avsl_core.batch_views import BatchViews, SeededBatch, batch_simclr, normalize, normalize_u8, seeded_batches


def _u8(b=6, s=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, s, s, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)  # HWC store


def test_normalize_u8_is_normalize_of_the_unit_image_and_keeps_channels_last():
    x = _u8()
    y = normalize_u8(x)
    torch.testing.assert_close(y, normalize(x.float() / 255), atol=1e-6, rtol=0)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    z = normalize_u8(x.contiguous())                              # NCHW: the broadcast path, same values
    assert z.is_contiguous() and torch.equal(z, y)
    assert x.dtype == torch.uint8                                 # the input is left alone


@pytest.mark.parametrize("kw", [{}, {"scale": (0.3, 1.0)}, {"jitter_p": 1.0, "grayscale_p": 1.0, "blur_p": 1.0},
                                {"scale": (0.6, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}])
def test_batch_simclr_on_uint8_normalised_equals_the_float_pipeline(kw):
    """The 1/255 and the normalisation folded into the colour matrix (and the clamp bounds) give the
    same views as SimCLR on [0, 1] floats followed by normalize, for the same draws."""
    x = _u8()
    a = normalize(batch_simclr(x.float() / 255, generator=torch.Generator().manual_seed(3), **kw))
    b = batch_simclr(x, generator=torch.Generator().manual_seed(3), normalized=True, **kw)
    torch.testing.assert_close(b, a, atol=2e-5, rtol=0)
    lo, hi = normalize(torch.zeros(1, 3, 1, 1)), normalize(torch.ones(1, 3, 1, 1))
    assert (b >= lo - 1e-6).all() and (b <= hi + 1e-6).all()


def test_batch_simclr_generator_makes_it_reproducible_and_leaves_the_global_rng_alone():
    x = _u8()
    state = torch.get_rng_state()
    a = batch_simclr(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    b = batch_simclr(x, generator=torch.Generator().manual_seed(5))
    c = batch_simclr(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def _items(b=4, s=16):
    g = torch.Generator().manual_seed(0)
    return [{"index": i, "id": str(i), "image_u8": torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8),
             "image_conc_u8": torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8),
             "spec": torch.zeros(1, 4, 8), "spec_aug": torch.zeros(1, 4, 8)} for i in range(b)]


@pytest.mark.parametrize("anchor", [None, {"scale": (0.5, 0.9), "flip_p": 0.5}])
def test_batch_views_channels_last_only_changes_the_layout(anchor):
    items = _items()
    views = {}
    for cl in (False, True):
        torch.manual_seed(0)
        views[cl] = BatchViews(anchor=anchor, channels_last=cl)(items)
    for k in ("image", "image_aug", "image_conc"):
        assert views[True][k].is_contiguous(memory_format=torch.channels_last)
        assert views[False][k].is_contiguous()
        assert torch.equal(views[True][k], views[False][k]), k


def test_seeded_batch_pickles_and_seeds_differ_per_batch_and_key():
    sb = seeded_batches([[0, 1], [2, 3], [4, 5]], [7, 1, 0])
    assert [list(b) for b in sb] == [[0, 1], [2, 3], [4, 5]] and len({b.seed for b in sb}) == 3
    tail = seeded_batches([[0, 1], [2, 3], [4, 5]], [7, 1, 0], start=1)       # a resumed phase
    assert [(list(b), b.seed) for b in tail] == [(list(b), b.seed) for b in sb[1:]]
    other = seeded_batches([[0, 1]], [7, 2, 0])                                 # another phase
    assert other[0].seed != sb[0].seed
    back = pickle.loads(pickle.dumps(sb[1]))
    assert isinstance(back, SeededBatch) and list(back) == [2, 3] and back.seed == sb[1].seed
    assert 0 <= sb[0].seed < 2 ** 63


def test_fetch_batches_runs_the_loader_single_threaded_and_restores_the_setting():
    seen = []

    def collate(items):
        seen.append(torch.get_num_threads())
        return torch.tensor(items)

    loader = DataLoader(list(range(6)), batch_size=2, collate_fn=collate)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = [b.tolist() for b in T.fetch_batches(loader, 1)]
        assert torch.get_num_threads() == 2
        assert out == [[0, 1], [2, 3], [4, 5]] and seen == [1, 1, 1]
        seen.clear()
        assert len(list(T.fetch_batches(loader, None))) == 3 and seen == [2, 2, 2]
    finally:
        torch.set_num_threads(n)
