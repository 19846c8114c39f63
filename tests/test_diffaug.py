"""Tests of diffaug.py: each policy's ranges and geometry, p, gradients, seeding, and ADA's p."""
import json

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import diffaug
from diffaug import AdaptiveP, augment, parse_policy

B = 4096  # images per statistics test: binomial and KS tolerances below assume it


def distinct_images(b, h=16, w=16, c=3):
    """Images whose pixels are all different and nonzero, so any move or cut shows."""
    return 1 + torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w) / (b * c * h * w)


def shifted(x, tx, ty):
    """The translation convention: out[:, :, i, j] = x[:, :, i + tx, j + ty], zeros outside."""
    H, W = x.shape[2:]
    out = torch.zeros_like(x)
    out[:, :, max(0, -tx):H - max(0, tx), max(0, -ty):W - max(0, ty)] = \
        x[:, :, max(0, tx):H + min(0, tx), max(0, ty):W + min(0, ty)]
    return out


def changed(out, x):
    """Which images differ anywhere."""
    return (out != x).flatten(1).any(1)


def scale_between(a, b):
    """Per image, the least-squares f with b = f * a (exact when b is a scaled a)."""
    return (a * b).flatten(1).sum(1) / (a * a).flatten(1).sum(1)


def assert_uniform(values, low, high):
    assert values.min() >= low and values.max() <= high
    assert stats.kstest(values.double().numpy(), 'uniform', args=(low, high - low)).pvalue > 1e-3


def assert_binomial_share(hits, prob):
    n = hits.numel()
    assert abs(hits.float().mean().item() - prob) < 4 * (prob * (1 - prob) / n) ** 0.5 + 1e-9


# ----------------------------------------------------------------------------------------
# The forks' DiffAugment_pytorch.py (mit-han-lab/data-efficient-gans), transcribed as the
# reference; only meshgrid's indexing='ij' (its old default) is spelt out.
# ----------------------------------------------------------------------------------------


def fork_brightness(x):
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def fork_saturation(x):
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) * 2
                           ) + x_mean


def fork_contrast(x):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5
                           ) + x_mean


def fork_translation(x, ratio=0.125):
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1], device=x.device)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1], device=x.device)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(x.size(2), dtype=torch.long, device=x.device),
        torch.arange(x.size(3), dtype=torch.long, device=x.device), indexing='ij')
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def fork_cutout(x, ratio=0.5):
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    offset_x = torch.randint(0, x.size(2) + (1 - cutout_size[0] % 2), size=[x.size(0), 1, 1],
                             device=x.device)
    offset_y = torch.randint(0, x.size(3) + (1 - cutout_size[1] % 2), size=[x.size(0), 1, 1],
                             device=x.device)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(cutout_size[0], dtype=torch.long, device=x.device),
        torch.arange(cutout_size[1], dtype=torch.long, device=x.device), indexing='ij')
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


FORK_FNS = {'color': [fork_brightness, fork_saturation, fork_contrast],
            'translation': [fork_translation], 'cutout': [fork_cutout]}


def fork_diffaugment(x, policy):
    for p in policy.split(','):
        for f in FORK_FNS[p]:
            x = f(x)
    return x.contiguous()


@pytest.mark.parametrize('shape', [(64, 3, 16, 16), (64, 3, 12, 20), (64, 3, 9, 7)])
def test_p1_reproduces_the_forks_images_draw_for_draw(shape):
    x = torch.rand(shape) * 2 - 1
    torch.manual_seed(3)
    ours = augment(x, 'color,translation,cutout')
    torch.manual_seed(3)
    assert torch.equal(ours, fork_diffaugment(x, 'color,translation,cutout'))
    assert diffaug.DiffAugment is augment


# ----------------------------------------------------------------------------------------
# Policy names
# ----------------------------------------------------------------------------------------


def test_parse_policy_reads_names_in_order():
    assert parse_policy('translation,cutout') == ['translation', 'cutout']
    assert parse_policy(' flip , translation ') == ['flip', 'translation']
    assert parse_policy('') == [] and parse_policy('none') == []
    assert parse_policy(','.join(diffaug.POLICIES)) == list(diffaug.POLICIES)


@pytest.mark.parametrize('policy,named', [('colour', 'colour'), ('translation,Cutout', 'Cutout'),
                                          ('none,flip', 'none')])
def test_unknown_policies_are_named_beside_the_known_ones(policy, named):
    with pytest.raises(ValueError) as error:
        parse_policy(policy)
    assert named in str(error.value)
    assert all(name in str(error.value) for name in diffaug.POLICIES)
    with pytest.raises(ValueError):  # a list skips parsing, not checking
        augment(torch.zeros(1, 3, 4, 4), policy.split(','))


def test_repeated_policies_are_errors():
    with pytest.raises(ValueError, match='cutout'):
        parse_policy('cutout,color,cutout')


@pytest.mark.parametrize('p', [-0.1, 1.5])
def test_probabilities_outside_0_1_are_errors(p):
    with pytest.raises(ValueError, match=str(p)):
        augment(torch.zeros(1, 3, 4, 4), 'color', p)


# ----------------------------------------------------------------------------------------
# What each policy does
# ----------------------------------------------------------------------------------------


def test_brightness_adds_one_uniform_shift_per_image():
    torch.manual_seed(0)
    x = torch.rand(B, 3, 4, 4) - 0.5
    shift = diffaug._brightness(x) - x
    per_image = shift[:, :1, :1, :1]
    assert torch.allclose(shift, per_image.expand_as(shift), atol=1e-6)
    assert_uniform(per_image.flatten(), -0.5, 0.5)


def test_saturation_scales_deviation_from_the_channel_mean_by_u_0_2():
    torch.manual_seed(0)
    x = torch.rand(B, 3, 4, 4) * 2 - 1
    out = diffaug._saturation(x)
    mean = x.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), mean, atol=1e-5)
    factor = scale_between(x - mean, out - mean)
    assert torch.allclose(out, mean + (x - mean) * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert_uniform(factor, 0, 2)


def test_contrast_scales_deviation_from_the_image_mean_by_u_half_to_3_halves():
    torch.manual_seed(0)
    x = torch.rand(B, 3, 4, 4) * 2 - 1
    out = diffaug._contrast(x)
    mean = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean((1, 2, 3), keepdim=True), mean, atol=1e-5)
    factor = scale_between(x - mean, out - mean)
    assert torch.allclose(out, mean + (x - mean) * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert_uniform(factor, 0.5, 1.5)


def test_color_is_brightness_then_saturation_then_contrast():
    x = torch.rand(8, 3, 4, 4) * 2 - 1
    torch.manual_seed(1)
    out = augment(x, 'color')
    torch.manual_seed(1)
    assert torch.equal(out, diffaug._contrast(diffaug._saturation(diffaug._brightness(x))))


@pytest.mark.parametrize('h,w', [(16, 16), (8, 12)])
def test_translation_shifts_each_image_by_some_tx_ty_in_range_all_equally_often(h, w):
    torch.manual_seed(0)
    x = distinct_images(2048, h, w)
    out = augment(x, 'translation')
    s_rows, s_cols = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    shifts = [(tx, ty) for tx in range(-s_rows, s_rows + 1) for ty in range(-s_cols, s_cols + 1)]
    matches = torch.stack([(out == shifted(x, tx, ty)).flatten(1).all(1) for tx, ty in shifts])
    assert (matches.sum(0) == 1).all()  # each image is x moved by exactly one allowed shift
    counts = matches.sum(1).numpy()
    assert counts.min() > 0 and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize('side', [16, 10])  # even and odd square sizes (8, 5)
def test_cutout_zeroes_one_clipped_square_per_image_at_uniform_offsets(side):
    torch.manual_seed(0)
    x = distinct_images(2048, side, side)
    out = augment(x, 'cutout')
    cut = out == 0
    assert torch.equal(out[~cut], x[~cut]) and (cut == cut[:, :1]).all()  # same in every channel
    cut = cut[:, 0]
    assert torch.equal(cut, cut.any(2)[:, :, None] & cut.any(1)[:, None, :])  # a rectangle
    size, half = int(side * 0.5 + 0.5), int(side * 0.5 + 0.5) // 2
    for rows in (cut.any(2), cut.any(1)):  # (B, side): which rows, then which columns, are cut
        first = rows.float().argmax(1)
        last = side - 1 - rows.flip(1).float().argmax(1)
        assert torch.equal(rows.sum(1), last - first + 1)  # contiguous
        clipped = (first == 0) | (last == side - 1)
        assert ((last - first + 1)[~clipped] == size).all()
        assert ((last - first + 1) <= size).all() and ((last - first + 1) >= size - half).all()
        offset = torch.where(first > 0, first + half, last - (size - 1 - half))
        counts = torch.bincount(offset, minlength=side + 1 - size % 2).numpy()
        assert len(counts) == side + 1 - size % 2  # offsets 0 ... side - size % 2
        assert counts.min() > 0 and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize('p,share', [(1.0, 0.5), (0.4, 0.2)])
def test_flip_mirrors_a_random_half_of_p(p, share):
    torch.manual_seed(0)
    x = distinct_images(B, 4, 4)
    out = augment(x, 'flip', p)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert torch.equal(flipped, ~(out == x).flatten(1).all(1))  # each image is one or the other
    assert_binomial_share(flipped, share)


def test_each_image_gets_its_own_draws():
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 16, 16).expand(512, 3, 16, 16)
    out = augment(x, 'color,translation,cutout')
    assert out.shape == x.shape
    assert torch.unique(out.flatten(1), dim=0).size(0) == 512


# ----------------------------------------------------------------------------------------
# The probability p
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('p', [0.0, torch.tensor(0.0)])
def test_p_0_returns_the_input_exactly(p):
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    out = augment(x, 'color,translation,cutout,flip', p)
    assert torch.equal(out, x) and out is not x


@pytest.mark.parametrize('policy,reach', [('color', 1.0), ('cutout', 1.0), ('flip', 0.5),
                                          ('translation', 24 / 25)])  # (0, 0) moves nothing
@pytest.mark.parametrize('as_tensor', [False, True])
def test_p_augments_that_share_of_images_and_leaves_the_rest(policy, reach, as_tensor):
    torch.manual_seed(0)
    x = distinct_images(B, 16, 16)
    p = torch.tensor(0.3) if as_tensor else 0.3
    out = augment(x, policy, p)
    assert_binomial_share(changed(out, x), 0.3 * reach)
    torch.manual_seed(1)
    assert changed(augment(x, policy, 1.0), x).all() == (reach == 1.0)


@pytest.mark.parametrize('policy', ['color', 'translation', 'cutout'])
def test_p_as_the_tensor_1_gives_the_float_1_images(policy):
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    torch.manual_seed(2)
    as_float = augment(x, policy)
    torch.manual_seed(2)  # the tensor's per-image draw comes after the policy's own draws
    assert torch.equal(augment(x, policy, torch.tensor(1.0)), as_float)


# ----------------------------------------------------------------------------------------
# Gradients, seeding and dtypes
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('p', [1.0, 0.5])
def test_color_is_differentiable(p):
    x = torch.rand(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def seeded(x):
        torch.manual_seed(0)
        return augment(x, 'color', p)

    assert torch.autograd.gradcheck(seeded, (x,))


def test_translation_passes_gradient_to_the_pixels_that_stay_in_view():
    torch.manual_seed(0)
    x = distinct_images(256).requires_grad_()
    out = augment(x, 'translation')
    out.sum().backward()
    assert torch.equal(x.grad, torch.isin(x, out).float())


def test_cutout_passes_gradient_to_the_pixels_left_uncut():
    torch.manual_seed(0)
    x = distinct_images(256).requires_grad_()
    out = augment(x, 'cutout')
    (out * 3).sum().backward()
    assert torch.equal(x.grad, 3 * (out != 0).float())


def test_flip_passes_gradient_back_to_the_mirrored_pixel():
    torch.manual_seed(0)
    x = distinct_images(256).requires_grad_()
    weight = torch.rand_like(x)
    out = augment(x, 'flip')
    (out * weight).sum().backward()
    flipped = (out == x.flip(3)).flatten(1).all(1)[:, None, None, None]
    assert torch.equal(x.grad, torch.where(flipped, weight.flip(3), weight))


def test_same_seed_same_images_other_seed_other_images_input_untouched():
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    before = x.clone()
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(augment(x, 'color,translation,cutout,flip', torch.tensor(0.7)))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(x, before)


def test_bf16_under_autocast_stays_bf16_and_differentiable():
    torch.manual_seed(0)
    x = (torch.rand(16, 3, 8, 8) * 2 - 1).bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = augment(x, 'color,translation,cutout,flip', torch.tensor(0.8))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# AdaptiveP
# ----------------------------------------------------------------------------------------


def run(ada, D_reals, first_itr=1):
    """Feed one D_real per iteration; p after each."""
    ps = []
    for itr, D_real in enumerate(D_reals, start=first_itr):
        ada.accumulate(D_real)
        ada.step(itr)
        ps.append(ada.p.item())
    return ps


def test_overfitting_raises_p_by_the_ada_step_each_interval_until_1():
    ada = AdaptiveP(batch_size=32, interval=4, kimg=0.5)  # step 32 * 4 / 500 = 0.256
    p = ada.p
    assert ada.r_t.isnan()
    ps = run(ada, [torch.rand(32, 1) + 0.1] * 20)
    expected = [min(1.0, 0.256 * (itr // 4)) for itr in range(1, 21)]
    assert ps == pytest.approx(expected, abs=1e-6)
    assert ada.r_t.item() == 1.0 and ada.p is p and ada.p.dtype == torch.float32


def test_no_overfitting_keeps_p_at_0_and_lowers_it_from_above():
    ada = AdaptiveP(batch_size=8, interval=2, kimg=0.1)  # step 0.16
    assert run(ada, [-torch.rand(8) - 0.1] * 6) == [0.0] * 6
    ada = AdaptiveP(batch_size=8, interval=2, kimg=0.1, p=0.5)
    assert run(ada, [-torch.rand(8) - 0.1] * 4) == pytest.approx([0.5, 0.34, 0.34, 0.18])
    assert ada.r_t.item() == -1.0


def test_r_t_is_the_interval_mean_of_sign():
    ada = AdaptiveP(batch_size=4, interval=3, kimg=1.0, p=0.5)  # step 0.012
    D_reals = [torch.tensor([1., 2., 0., 0.]), torch.tensor([3., 1., -1., -2.]),
               torch.tensor([1., 1., 1., 1.])]  # signs sum 2 + 0 + 4 = 6 over 12
    assert run(ada, D_reals) == pytest.approx([0.5, 0.5, 0.488])  # r_t 0.5 < 0.6: p falls
    assert ada.r_t.item() == 0.5
    assert ada.state_dict()['count'] == 0 and ada.state_dict()['sign_sum'] == 0.0


def test_bf16_logits_are_counted_exactly():
    ada = AdaptiveP(batch_size=1001, interval=1)
    D_real = torch.ones(1001, dtype=torch.bfloat16)
    D_real[0] = -1  # bf16 holds 999 as 1000: the signs must be summed in float32
    ada.accumulate(D_real)
    ada.step(1)
    assert ada.r_t.item() == pytest.approx(999 / 1001, abs=1e-7)


def test_a_restored_controller_continues_the_same_p_sequence(tmp_path):
    gen = torch.Generator().manual_seed(0)
    D_reals = [torch.randn(16, generator=gen) + 0.8 for _ in range(40)]
    kwargs = dict(batch_size=16, interval=4, kimg=0.2, target=0.6, p=0.2)
    uninterrupted = AdaptiveP(**kwargs)
    whole = run(uninterrupted, D_reals[:20])
    at_20 = uninterrupted.state_dict()
    whole += run(uninterrupted, D_reals[20:], first_itr=21)
    first = AdaptiveP(**kwargs)
    ps = run(first, D_reals[:17])  # stops mid-interval: the partial sums must travel
    state = first.state_dict()
    assert all(type(v) in (float, int) for v in state.values()) and state['count'] == 16
    torch.save(state, tmp_path / 'ada.pth')
    state = json.loads(json.dumps(torch.load(tmp_path / 'ada.pth', weights_only=True)))
    resumed = AdaptiveP(**kwargs)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # r_t too, for the logs before the next adjustment
    ps += run(resumed, D_reals[17:20], first_itr=18)
    assert resumed.state_dict() == at_20  # r_t of itr 17 to 20, though 17 ran before
    ps += run(resumed, D_reals[20:], first_itr=21)
    assert ps == whole
    assert len(set(whole)) > 3  # p moved both ways, so the check has teeth


def test_p_from_the_controller_drives_augment():
    ada = AdaptiveP(batch_size=4, p=0.3)
    torch.manual_seed(0)
    x = distinct_images(B, 8, 8)
    assert_binomial_share(changed(augment(x, 'cutout', ada.p), x), 0.3)


@pytest.mark.parametrize('kwargs', [dict(batch_size=0), dict(batch_size=4, interval=0),
                                    dict(batch_size=4, kimg=0), dict(batch_size=4, p=1.2)])
def test_bad_controller_settings_are_errors(kwargs):
    with pytest.raises(ValueError):
        AdaptiveP(**kwargs)
