"""Tests of the small-data training machinery: LeCam and CR terms, DiffAugment in the step,
adaptive p, --num_samples subsets, --mirror_augment, and exact resume with all of it on."""
import numpy as np
import pytest
import torch

import BigGAN
import datasets
import train
import train_fns
import utils
from helpers import write_hdf5
from objectives import Batch
from small_data import Augmentation

TINY = ['--G_ch', '4', '--D_ch', '4', '--dim_z', '16', '--shared_dim', '8', '--G_shared',
        '--hier', '--G_attn', '0', '--D_attn', '0', '--batch_size', '4', '--num_D_steps', '2',
        '--num_workers', '0', '--test_every', '0', '--log_every', '1', '--logstyle', '%.10e',
        '--G_lr', '2e-4', '--D_lr', '2e-4', '--ema', '--use_ema']
SMALL = ['--DiffAugment', 'translation,cutout,color', '--DiffAugment_p', 'auto',
         '--ada_kimg', '0.05', '--ada_interval', '2', '--LC', '0.3', '--LC_start', '2',
         '--CR', '1.0', '--mirror_augment', '--num_samples', '24']


@pytest.fixture
def data_file(tmp_path):
    return write_hdf5(tmp_path / 'tiny.hdf5', n=40, n_classes=4)


def run_flags(root, data_file, *extra):
    return ['--dataset', str(data_file), '--base_root', str(root / 'run'),
            '--experiment_name', 'tiny', *TINY, *extra]


# ----------------------------------------------------------------------------------------
# The penalties against hand-computed values
# ----------------------------------------------------------------------------------------


def objective_config(**flags) -> dict:
    """A config with the small-data flags' defaults and `flags`."""
    config = vars(utils.prepare_parser().parse_args([]))
    config.update({'batch_size': 4, 'num_D_steps': 2, 'num_D_accumulations': 1, **flags})
    return config


def lecam(**flags) -> train_fns.LeCam:
    return train_fns.LeCam(objective_config(LC=1.0, **flags))


def test_lecam_penalty_by_hand():
    """mean(relu(D_real - ema_fake)^2) + mean(relu(ema_real - D_fake)^2), weighted by LC,
    with the EMAs holding this minibatch's means once folded in (google/lecam-gan's order)."""
    reg = train_fns.LeCam(objective_config(LC=0.5, LC_start=0, LC_decay=0.9))
    reg.ema_real.fill_(0.5)
    reg.ema_fake.fill_(-0.25)
    reg.updates = 1
    D_real = torch.tensor([[1.0], [-1.0], [0.0]])   # mean 0
    D_fake = torch.tensor([[0.0], [1.0]])           # mean 0.5
    ema_real, ema_fake = 0.9 * 0.5 + 0.1 * 0.0, 0.9 * -0.25 + 0.1 * 0.5
    expected = (sum(max(r - ema_fake, 0) ** 2 for r in (1.0, -1.0, 0.0)) / 3
                + sum(max(ema_real - f, 0) ** 2 for f in (0.0, 1.0)) / 2)
    b = Batch(fake=None, y_fake=None, D_fake=D_fake, D_real=D_real, itr=3)
    assert reg.D_terms(b)['D_loss_LC'].item() == pytest.approx(0.5 * expected)


def test_consistency_penalty_by_hand():
    """CR * mean((D(x) - D(T(x)))^2), D(T(x)) from the view the regulariser asked for."""
    reg = train_fns.Consistency(objective_config(CR=2.0))
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8)
    assert set(reg.views(x, torch.zeros(3))) == {'real_T'}
    a, b = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([[0.0], [2.5], [1.0]])
    batch = Batch(fake=None, y_fake=None, D_fake=None, D_real=a, views={'real_T': b})
    assert reg.D_terms(batch)['D_loss_CR'].item() == pytest.approx(2.0 * (1 + 0.25 + 4) / 3)


def test_lecam_defaults_are_google_lecam_gans_biggan_code():
    """EMA decay 0.9 and start 1000, as `ema_losses` in google/lecam-gan's BigGAN code."""
    reg = lecam()
    assert (reg.decay, reg.start) == (0.9, 1000)


def test_lecam_ema_follows_until_start_then_averages_and_round_trips():
    ema = lecam(LC_start=3)
    ema.update(torch.tensor([2.0, 4.0]), torch.tensor([-1.0]), itr=1)
    assert (ema.ema_real.item(), ema.ema_fake.item()) == (3.0, -1.0)  # decay 0 before start
    ema.update(torch.tensor([1.0]), torch.tensor([1.0]), itr=2)
    assert (ema.ema_real.item(), ema.ema_fake.item()) == (1.0, 1.0)
    ema.update(torch.tensor([3.0]), torch.tensor([-1.0]), itr=2)
    ema.update(torch.tensor([1.0]), torch.tensor([1.0]), itr=3)
    assert ema.ema_real.item() == pytest.approx(0.9 * 3.0 + 0.1 * 1.0)
    assert ema.ema_fake.item() == pytest.approx(0.9 * -1.0 + 0.1 * 1.0)
    other = lecam(LC_start=3)
    other.load_state_dict(ema.state_dict())
    assert other.state_dict() == ema.state_dict()
    first = lecam(LC_start=0)  # averaging from the start: the first value seeds it
    first.update(torch.tensor([5.0]), torch.tensor([-5.0]), itr=1)
    assert (first.ema_real.item(), first.ema_fake.item()) == (5.0, -5.0)


def test_lecam_waits_for_its_start():
    reg = lecam(LC_start=5)
    D_fake, D_real = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    assert reg.D_terms(Batch(None, None, D_fake, D_real=D_real, itr=5))['D_loss_LC'] == 0
    # The EMAs hold the outputs (real 1, fake 0): relu(1 - 0)^2 + relu(1 - 0)^2.
    terms = reg.D_terms(Batch(None, None, D_fake, D_real=D_real, itr=6))
    assert terms['D_loss_LC'].item() == pytest.approx(2.0)


def augmentation(**flags) -> Augmentation:
    config = {'DiffAugment': '', 'DiffAugment_p': 1.0, 'ada_target': 0.6, 'ada_interval': 4,
              'ada_kimg': 500.0, 'batch_size': 4, 'num_D_steps': 2, 'num_D_accumulations': 1,
              **flags}
    return Augmentation.from_config(config, 'cpu')


def test_no_DiffAugment_means_no_augmentation():
    assert augmentation() is None
    assert augmentation(DiffAugment='cutout').ada is None
    ada = augmentation(DiffAugment='cutout', DiffAugment_p='auto').ada
    # p moves by the real images of an interval over ada_kimg thousand: batch 4 x 2 D steps.
    assert ada.speed == pytest.approx(4 * 2 * 4 / 500e3)


def test_ranks_draw_their_own_augmentations_and_keep_the_shared_rng():
    """Under DDP each rank's images get their own transforms, while the shared RNG (from
    which every rank draws the global z batch) advances alike on every rank."""
    x = torch.randn(16, 3, 8, 8)
    outs, next_draws = [], []
    for rank in (0, 1):
        augment = augmentation(DiffAugment='translation,cutout')
        augment.rank, augment.world_size = rank, 2
        torch.manual_seed(7)
        outs.append(augment(x))
        next_draws.append(torch.rand(3))
    assert not torch.equal(outs[0], outs[1])
    assert torch.equal(next_draws[0], next_draws[1])
    torch.manual_seed(7)
    augment = augmentation(DiffAugment='translation,cutout')
    augment.rank, augment.world_size = 1, 2
    assert torch.equal(augment(x), outs[1])  # and reproducibly so


# ----------------------------------------------------------------------------------------
# G_D and D_pass: what D sees
# ----------------------------------------------------------------------------------------


class SpyD(torch.nn.Module):
    """A D that records its inputs and returns each image's mean as its output."""

    def __init__(self):
        super().__init__()
        self.inputs = []
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, y):
        self.inputs.append(x.detach().clone())
        return x.mean((1, 2, 3)).unsqueeze(1) + self.b


class ConstG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Embedding(3, 2)
        self.w = torch.nn.Parameter(torch.ones(()))
        self.dim_z = 1

    def forward(self, z, y):
        return self.w * z.view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


@pytest.mark.parametrize('split_D', [False, True])
def test_G_D_augments_fakes_reals_and_views_alike(split_D):
    GD = BigGAN.G_D(ConstG(), SpyD(), augment=lambda x: x + 100, split_D=split_D)
    z, gy = torch.tensor([1.0, 2.0]), torch.tensor([0, 1])
    x, dy = torch.full((2, 3, 4, 4), 5.0), torch.tensor([2, 2])
    G_z, (D_fake, D_real, D_real_T) = GD(z, gy, [x, -x], [dy, dy])
    assert D_fake.view(-1).tolist() == [101.0, 102.0]  # fakes augmented
    assert D_real.view(-1).tolist() == [105.0, 105.0]  # reals augmented
    assert D_real_T.view(-1).tolist() == [95.0, 95.0]  # a view T(x) = -x, then augmented
    D_fake.sum().backward()
    assert GD.G.w.grad is not None  # through the augmentation into G


def test_the_D_step_shows_D_the_consistency_view_of_the_reals_in_one_pass():
    """With --CR the D step's one D call holds fakes, reals and T(reals), all augmented."""
    G, D = ConstG(), SpyD()
    config = objective_config(CR=1.0, CR_augment='flip', num_D_steps=1, batch_size=2,
                              G_batch_size=2, split_D=False, ema=False)
    nets = train_fns.Nets(G, D, None, *(torch.optim.SGD(net.parameters(), lr=0.0)
                                        for net in (G, D)))
    step = train_fns.GAN_training_function(nets, BigGAN.G_D(G, D, augment=lambda x: x + 100),
                                           {'itr': 1}, config, latents=utils.Latents(2, 1, 3))
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    losses = step(x, torch.tensor([0, 1]))
    seen = D.inputs[0]  # the D step's pass
    assert seen.shape[0] == 6
    assert torch.equal(seen[2:4], x + 100)
    for view, image in zip(seen[4:6] - 100, x):  # 'flip': each image mirrored or not
        assert torch.equal(view, image) or torch.equal(view, image.flip(2))
    assert 'D_loss_CR' in losses


# ----------------------------------------------------------------------------------------
# Data: --num_samples, --mirror_augment
# ----------------------------------------------------------------------------------------


def test_subset_is_seeded_sorted_and_recorded_subsets_are_checked():
    a = datasets.choose_subset(100, 10, seed=0)
    assert np.array_equal(a, datasets.choose_subset(100, 10, seed=0))
    assert not np.array_equal(a, datasets.choose_subset(100, 10, seed=1))
    assert np.all(np.diff(a) > 0) and a.max() < 100
    assert np.array_equal(datasets.choose_subset(100, 3, 0, recorded=[5, 1, 7]), [5, 1, 7])
    with pytest.raises(ValueError, match='has 100 images'):
        datasets.choose_subset(100, 101, 0)
    with pytest.raises(ValueError, match='resume it on the data it was started on'):
        datasets.choose_subset(5, 3, 0, recorded=[1, 2, 9])


@pytest.mark.parametrize('kind', ['hdf5', 'array'])
def test_loader_trains_on_the_subset_only(tmp_path, kind):
    if kind == 'hdf5':
        path = write_hdf5(tmp_path / 'd.hdf5', n=30, n_classes=3)
        loader = datasets.get_data_loaders(str(path), batch_size=6, num_workers=0,
                                           num_samples=12, seed=4)[0]
        full = datasets.build_dataset(datasets.resolve_dataset(str(path)))
    else:  # CIFAR's path: an ArrayDataset wrapped the same way
        full = datasets.ArrayDataset(np.random.default_rng(0).integers(
            0, 256, (30, 3, 8, 8), dtype=np.uint8), np.arange(30) % 3)
        loader = torch.utils.data.DataLoader(datasets.SubsetDataset(
            full, datasets.choose_subset(30, 12, 4)), batch_size=6)
    indices = datasets.choose_subset(30, 12, 4)
    assert np.array_equal(loader.dataset.indices, indices)
    seen = torch.cat([x for x, _ in loader])
    want = torch.stack([full[int(i)][0] for i in indices])
    assert sorted(map(tuple, seen.flatten(1).tolist())) == sorted(map(tuple, want.flatten(1)
                                                                      .tolist()))


def test_mirror_augment_flips_about_half_reproducibly(tmp_path):
    path = write_hdf5(tmp_path / 'd.hdf5', n=200, n_classes=2)

    def flipped() -> list[bool]:
        loader = datasets.get_data_loaders(str(path), batch_size=200, num_workers=0,
                                           mirror_augment=True, seed=3, shuffle=False)[0]
        full = datasets.build_dataset(datasets.resolve_dataset(str(path)))
        x, _ = next(iter(loader))
        out = []
        for i in range(200):
            plain = full[i][0]
            assert torch.equal(x[i], plain) or torch.equal(x[i], plain.flip(-1))
            out.append(not torch.equal(x[i], plain))
        return out
    first = flipped()
    assert 70 < sum(first) < 130
    assert flipped() == first


# ----------------------------------------------------------------------------------------
# Training with all of it on
# ----------------------------------------------------------------------------------------


def test_diffaugment_runs_in_the_D_and_G_steps(tmp_path, data_file, monkeypatch):
    """Every D input of the D step (fakes + reals + CR half) and of the G step (fakes) goes
    through DiffAugment, at the adaptive p."""
    import diffaug
    calls = []
    real = diffaug.augment

    def spy(x, policy, p=1.0):
        calls.append((x.shape[0], tuple(policy), float(p)))
        return real(x, policy, p)
    monkeypatch.setattr(diffaug, 'augment', spy)
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '0',
                         '--DiffAugment', 'translation,cutout', '--CR', '1.0'))
    policies = {c[1] for c in calls}
    assert policies == {('translation', 'cutout'), ('flip', 'translation')}
    sizes = [n for n, policy, _ in calls if policy == ('translation', 'cutout')]
    # Per iteration: two D steps of 4 fakes + 4 reals + 4 transformed reals, one G step of 4.
    assert sizes[:3] == [12, 12, 4]


def test_logs_show_D_outputs_and_the_small_data_terms(tmp_path, data_file):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '4', '--save_every', '0',
                         *SMALL))
    logs = tmp_path / 'run' / 'logs' / 'tiny'
    for name in ('D_real', 'D_fake', 'D_loss_LC', 'D_loss_CR', 'ada_p', 'ada_r_t'):
        assert (logs / f'{name}.log').is_file(), name
    p = [float(line.split(':')[1]) for line in (logs / 'ada_p.log').read_text().splitlines()]
    assert all(0 <= v <= 1 for v in p)
    lc = [float(line.split(':')[1]) for line in (logs / 'D_loss_LC.log').read_text()
          .splitlines()]
    assert lc[0] == 0 and any(v > 0 for v in lc[2:])  # LeCam from iteration 3 (start 2)


def assert_same_run(a, b) -> None:
    for log in ('G_loss', 'D_real', 'ada_p', 'D_loss_LC', 'D_loss_CR'):
        assert ((a / 'run' / 'logs' / 'tiny' / f'{log}.log').read_text()
                == (b / 'run' / 'logs' / 'tiny' / f'{log}.log').read_text()), log
    for name in ('G', 'D', 'G_ema'):
        x = utils.load_file(str(a / 'run' / 'weights' / 'tiny' / f'{name}.pth'))
        y = utils.load_file(str(b / 'run' / 'weights' / 'tiny' / f'{name}.pth'))
        for key in x:
            torch.testing.assert_close(x[key], y[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize('sampler', [[], ['--use_multiepoch_sampler']])
def test_resume_is_exact_with_augmentation_lecam_cr_adaptive_p_and_a_subset(
        tmp_path, data_file, sampler):
    """Stopped after 2 of 5 epochs and resumed: the same losses, p, LeCam/CR terms and
    weights as the uninterrupted run; the subset is the one recorded in the checkpoint."""
    flags = ['--save_every', '3', *SMALL, *sampler]
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    train.main(run_flags(straight, data_file, '--num_epochs', '5', *flags))
    train.main(run_flags(split, data_file, '--num_epochs', '2', *flags))
    saved = utils.load_file(str(split / 'run' / 'weights' / 'tiny' / 'state_dict.pth'))
    assert saved['subset'] == datasets.choose_subset(40, 24, 0).tolist()
    assert saved['augment']['ada'] is not None and saved['objectives']['LC']['updates'] > 0
    train.main(run_flags(split, data_file, '--num_epochs', '5', '--resume', *flags))
    assert_same_run(split, straight)


def test_checkpoints_from_before_objectives_were_classes_restore_lecam_and_p():
    """Earlier checkpoints kept LeCam's EMAs and the adaptive p under 'small_data'."""
    config = objective_config(LC=0.3, DiffAugment='cutout', DiffAugment_p='auto')
    lecam_state = {'real': 0.25, 'fake': -0.5, 'updates': 7}
    ada = augmentation(DiffAugment='cutout', DiffAugment_p='auto').ada
    ada.p.fill_(0.3)
    saved = {'small_data': {'lecam': lecam_state, 'ada': ada.state_dict()}}
    objs, augment = train.build_objectives(config, torch.device('cpu'), saved, rank=0,
                                           world_size=1)
    assert objs.regularisers[0].state_dict() == lecam_state
    assert augment.ada.p.item() == pytest.approx(0.3)


def test_bad_small_data_flags_are_parser_errors(capsys):
    for flags in (['--DiffAugment', 'translation,zoom'], ['--DiffAugment_p', '1.5'],
                  ['--CR_augment', 'rotate']):
        with pytest.raises(SystemExit):
            utils.prepare_parser().parse_args(flags)
        err = capsys.readouterr().err
        assert flags[0] in err
    assert utils.prepare_parser().parse_args(['--DiffAugment_p', 'auto']).DiffAugment_p == 'auto'


@pytest.mark.parametrize('name, policy, LC, CR', [
    ('biggan-cifar10-0.1.sh', '', 0.0, 0.0),
    ('DiffAugment-biggan-cifar10-0.1.sh', 'translation,cutout', 0.0, 0.0),
    ('lc-biggan-cifar10-0.1.sh', '', 0.3, 0.0),
    ('lc-DiffAugment-biggan-cifar10-0.1.sh', 'translation,cutout', 0.3, 0.0),
    ('cr-biggan-cifar10-0.1.sh', '', 0.0, 10.0),
    ('lc-cr-biggan-cifar10-0.1.sh', '', 0.3, 10.0)])
def test_fork_launchers_train_on_a_tenth_of_cifar_with_their_settings(name, policy, LC, CR):
    """The forks' CIFAR-10 10% launchers: 5,000 images, their regularisers, their name."""
    from test_scripts import SCRIPTS, parse_script
    config = parse_script(SCRIPTS / name)
    assert (config['dataset'], config['num_samples'], config['mirror_augment']) == ('C10', 5000,
                                                                                   True)
    assert (config['DiffAugment'], config['LC'], config['CR']) == (policy, LC, CR)
    assert config['experiment_name'] == name[:-len('.sh')]
