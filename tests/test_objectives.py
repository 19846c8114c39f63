"""Tests of the objectives: LSGAN, RpGAN, R1, R2 against hand references of their values and
gradients; lazy regularisation; the registry; run names; and a new objective defined in this
file alone that trains, checkpoints, survives SIGKILL, resumes exactly, logs and plots."""
import copy
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import BigGAN
import objectives
import train
import train_fns
import utils
from flags import NONNEGATIVE, POSITIVE_INT, Flag
from helpers import ROOT, FixedLatents, write_hdf5
from objectives import Batch, Objectives, Regulariser, register
from run_names import name_from_config

TINY = dict(resolution=32, G_ch=4, D_ch=4, dim_z=16, shared_dim=8, hier=True, G_shared=True,
            n_classes=3, G_attn='0', D_attn='0')


def config_with(*argv, **values) -> dict:
    config = vars(utils.prepare_parser().parse_args(list(argv)))
    config.update(TINY, batch_size=4, G_batch_size=4, num_D_steps=1, num_D_accumulations=1,
                  num_G_accumulations=1, split_D=False, ema=False)
    config.update(values)
    return config


def outputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs))


# ----------------------------------------------------------------------------------------
# Losses: values and gradients against hand-written formulas
# ----------------------------------------------------------------------------------------


def test_lsgan_equals_its_formula_and_gradient():
    """D: mean((D_real - 1)^2) + mean((D_fake + 1)^2); G: mean(D_fake^2) (reals high)."""
    loss = train_fns.LSGAN(config_with('--loss', 'lsgan'))
    D_real, D_fake = outputs(5, 0), outputs(5, 1)
    terms = loss.D_terms(Batch(None, None, D_fake, D_real=D_real))
    total = terms['D_loss_real'] + terms['D_loss_fake']
    by_hand = sum((r - 1) ** 2 for r in D_real.view(-1)) / 5 + sum(
        (f + 1) ** 2 for f in D_fake.view(-1)) / 5
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-6)
    g_real, g_fake = grads(total, D_real, D_fake)
    torch.testing.assert_close(g_real, 2 * (D_real - 1) / 5)  # d/dr of (r - 1)^2 / n
    torch.testing.assert_close(g_fake, 2 * (D_fake + 1) / 5)
    G = loss.G_terms(Batch(None, None, D_fake))['G_loss']
    assert G.item() == pytest.approx((D_fake ** 2).mean().item())
    torch.testing.assert_close(grads(G, D_fake)[0], 2 * D_fake / 5)


def test_rpgan_pairs_each_fake_with_its_real():
    """D: mean(softplus(D_fake - D_real)); G: mean(softplus(D_real - D_fake)), pairwise."""
    loss = train_fns.RpGAN(config_with('--loss', 'rpgan'))
    assert loss.G_needs_reals
    D_real, D_fake = outputs(4, 2), outputs(4, 3)
    D = loss.D_terms(Batch(None, None, D_fake, D_real=D_real))['D_loss']
    by_hand = sum(torch.log1p(torch.exp(f - r)) for f, r in zip(D_fake.view(-1),
                                                                 D_real.view(-1))) / 4
    assert D.item() == pytest.approx(by_hand.item(), rel=1e-6)
    sigma = torch.sigmoid(D_fake - D_real) / 4  # d softplus(u)/du = sigmoid(u)
    g_real, g_fake = grads(D, D_real, D_fake)
    torch.testing.assert_close(g_fake, sigma)
    torch.testing.assert_close(g_real, -sigma)
    G = loss.G_terms(Batch(None, None, D_fake, D_real=D_real))['G_loss']
    assert G.item() == pytest.approx(F.softplus(D_real - D_fake).mean().item())
    torch.testing.assert_close(grads(G, D_fake)[0], -torch.sigmoid(D_real - D_fake) / 4)
    # A different pairing is a different loss: the pairs matter, not only the two means.
    shuffled = loss.D_terms(Batch(None, None, D_fake.flip(0), D_real=D_real))['D_loss']
    assert shuffled.item() != pytest.approx(D.item())


# ----------------------------------------------------------------------------------------
# R1 / R2: a quadratic D with closed-form gradients, then the BigGAN D per sample
# ----------------------------------------------------------------------------------------


class QuadraticD(torch.nn.Module):
    """D(x) = sum(w * x^2) per image: grad_x D = 2 w x, so R1 = gamma/2 mean |2 w x|^2."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.rand(3, 4, 4) + 0.5)

    def forward(self, x, y=None):
        return (self.w * x ** 2).sum((1, 2, 3)).unsqueeze(1)


@pytest.mark.parametrize('which', ['R1', 'R2'])
def test_gradient_penalty_equals_its_closed_form_and_its_gradient(which):
    gamma = 0.7
    reg = getattr(train_fns, which)(config_with(f'--{which}', str(gamma)))
    D = QuadraticD()
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    out = D(x)
    b = (Batch(None, None, torch.zeros(6, 1), real=x, D_real=out) if which == 'R1' else
         Batch(x, None, out))
    term = reg.D_terms(b)[f'D_loss_{which}']
    w = D.w.detach()
    by_hand = gamma / 2 * ((2 * w * x.detach()) ** 2).sum((1, 2, 3)).mean()
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # d/dw of gamma/2 mean_i sum 4 w^2 x_i^2 = gamma/2 mean_i 8 w x_i^2
    (g_w,) = torch.autograd.grad(term, D.w)
    torch.testing.assert_close(g_w, gamma / 2 * (8 * w * x.detach() ** 2).mean(0))


def test_R1_on_the_biggan_D_equals_the_per_image_gradients():
    """The batched penalty through BigGAN's D (SN, projection) equals each image's own
    gradient norm, taken one image at a time; the penalty's gradient reaches D's weights."""
    torch.manual_seed(0)
    D = BigGAN.Discriminator(**TINY).eval()  # eval: no power-iteration step per forward
    x, y = torch.randn(3, 3, 32, 32, requires_grad=True), torch.tensor([0, 2, 1])
    term = train_fns.R1(config_with('--R1', '2')).D_terms(
        Batch(None, None, torch.zeros(3, 1), real=x, y_real=y, D_real=D(x, y)))['D_loss_R1']
    norms = []
    for i in range(3):
        xi = x[i:i + 1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi, y[i:i + 1]).sum(), xi)
        norms.append(g.square().sum())
    assert term.item() == pytest.approx((2 / 2 * torch.stack(norms).mean()).item(), rel=1e-5)
    term.backward()
    assert D.linear.weight.grad is not None and D.linear.weight.grad.abs().sum() > 0


def test_gradient_penalty_under_fp16_autocast_matches_fp32():
    """Under fp16 autocast (the D pass in half precision) the penalty is the unscaled one."""
    torch.manual_seed(0)
    D = BigGAN.Discriminator(**TINY).eval()
    x, y = torch.randn(2, 3, 32, 32, requires_grad=True), torch.tensor([0, 1])
    reg = train_fns.R1(config_with('--R1', '1'))
    penalties = []
    for dtype in (None, torch.float16):
        with torch.autocast('cpu', dtype=dtype or torch.float32, enabled=dtype is not None):
            out = D(x, y).float()
            penalties.append(reg.D_terms(Batch(None, None, out, real=x, D_real=out))['D_loss_R1'])
    assert penalties[1].item() == pytest.approx(penalties[0].item(), rel=2e-2)


# ----------------------------------------------------------------------------------------
# A whole R3GAN iteration against one written out by hand
# ----------------------------------------------------------------------------------------


def r3gan_by_hand(G, D, G_optim, D_optim, x, y, z, zy, gamma):
    """RpGAN + gamma/2 (R1 + R2) for D, RpGAN for G with the same reals, per R3GAN."""
    D_optim.zero_grad()
    with torch.no_grad():
        fake = G(z[:4], G.shared(zy[:4]))
    fake.requires_grad_(True)
    real = x.clone().requires_grad_(True)
    D_fake, D_real = D(torch.cat([fake, real]), torch.cat([zy[:4], y])).split(4)
    (g_real,) = torch.autograd.grad(D_real.sum(), real, create_graph=True)
    (g_fake,) = torch.autograd.grad(D_fake.sum(), fake, create_graph=True)
    loss = (F.softplus(D_fake - D_real).mean()
            + gamma / 2 * (g_real.square().sum([1, 2, 3]).mean()
                           + g_fake.square().sum([1, 2, 3]).mean()))
    loss.backward()
    D_optim.step()
    for p in D.parameters():
        p.requires_grad_(False)
    G_optim.zero_grad()
    G_z = G(z[4:], G.shared(zy[4:]))
    D_fake, D_real = D(torch.cat([G_z, x]), torch.cat([zy[4:], y])).split(4)
    F.softplus(D_real - D_fake).mean().backward()
    G_optim.step()


def test_an_r3gan_iteration_equals_the_one_written_by_hand():
    torch.manual_seed(0)
    config = config_with('--loss', 'rpgan', '--R1', '0.5', '--R2', '0.5')
    G, D = BigGAN.Generator(**TINY), BigGAN.Discriminator(**TINY)
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (4,))
    z, zy = torch.randn(8, G.dim_z), torch.randint(0, 3, (8,))

    def adam(net):
        return torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999))
    nets = train_fns.Nets(G, D, None, adam(G), adam(D))
    losses = train_fns.GAN_training_function(nets, BigGAN.G_D(G, D), {'itr': 1}, config,
                                             latents=FixedLatents(z, zy, 4))(x, y)
    r3gan_by_hand(G_ref, D_ref, adam(G_ref), adam(D_ref), x, y, z, zy, gamma=0.5)
    for net, ref in ((G, G_ref), (D, D_ref)):
        for (name, p), p_ref in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, atol=1e-6, rtol=1e-5, msg=name)
    assert set(losses) == {'G_loss', 'D_loss', 'D_loss_R1', 'D_loss_R2', 'D_real', 'D_fake'}


# ----------------------------------------------------------------------------------------
# Lazy regularisation, the registry, run names
# ----------------------------------------------------------------------------------------


def test_lazy_terms_run_every_N_iterations_weighted_by_N_and_stay_logged():
    config = config_with('--R1', '1', '--reg_every', '3')
    objs = Objectives(config)
    r1 = objs.regularisers[0]
    assert [r1 in objs.due(itr) for itr in range(1, 7)] == [False, False, True] * 2
    D = QuadraticD()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = Batch(x, None, D(x), real=x, D_real=D(x), itr=3)
    loss_terms, reg_terms, logged = train_fns.collect_terms(objs.due(3), b, 'D', objs.latest)
    penalty = objs.latest['D_loss_R1']
    assert 'D_loss_R1' not in logged  # logged through `latest`, without the factor
    torch.testing.assert_close(reg_terms['D_loss_R1'], 3 * penalty)
    _, reg_terms, _ = train_fns.collect_terms(objs.due(4), b, 'D', objs.latest)
    assert reg_terms == {} and torch.equal(objs.latest['D_loss_R1'], penalty)
    restored = Objectives(config)
    restored.load_state_dict(objs.state_dict())  # a resumed run logs the same value
    assert restored.latest['D_loss_R1'].item() == penalty.item()


def test_loss_choices_come_from_the_registry_and_mistakes_are_refused():
    parser = utils.prepare_parser()
    assert {'hinge', 'dcgan', 'lsgan', 'rpgan'} <= set(objectives.LOSSES)
    with pytest.raises(SystemExit):
        parser.parse_args(['--loss', 'wgan'])

    class Other(Regulariser):
        flags = (Flag('R1', 0.0, NONNEGATIVE, 'another R1'),)
    with pytest.raises(ValueError, match='registered twice'):
        register(Other)

    class AlwaysOn(Regulariser):
        flags = (Flag('always', 1.0, NONNEGATIVE, 'on by default'),)
    with pytest.raises(TypeError, match='default 0'):
        register(AlwaysOn)


def test_two_objectives_logging_the_same_name_is_an_error():
    class Twin(train_fns.R1):
        def D_terms(self, b):
            return {'D_loss_real': b.D_real.mean()}
    objs = Objectives(config_with())
    twin = Twin(config_with('--R1', '1'))
    b = Batch(None, None, torch.zeros(2, 1), D_real=torch.ones(2, 1))
    with pytest.raises(ValueError, match='D_loss_real'):
        train_fns.collect_terms([objs.loss, twin], b, 'D', {})


def test_runs_differing_in_post_2019_flags_get_different_names():
    base = name_from_config(config_with())
    names = {name_from_config(config_with(*flags)) for flags in (
        [], ['--loss', 'rpgan'], ['--R1', '0.2'], ['--LC', '0.3'], ['--DiffAugment', 'cutout'],
        ['--amp', 'bf16'], ['--loss', 'rpgan', '--R1', '0.2'])}
    assert len(names) == 7
    r3 = name_from_config(config_with('--loss', 'rpgan', '--R1', '0.2', '--R2', '0.2'))
    assert r3 == base + '_loss-rpgan_R1-0.2_R2-0.2'
    assert name_from_config(config_with('--loss', 'rpgan'), legacy=True) == base
    # Speed and logging flags name nothing: a resume may add --compile or --log_every.
    assert name_from_config(config_with('--compile', '--log_every', '7')) == base


# ----------------------------------------------------------------------------------------
# A new objective, defined in this file alone, in a real run: kill -9, resume, logs, plot
# ----------------------------------------------------------------------------------------


class MeanMatch(Regulariser):
    """A toy regulariser with state and a lazy term: D's mean output on reals held near its
    own running mean, every --toy_every iterations."""
    name = 'toy'
    flags = (Flag('toy', 0.0, NONNEGATIVE, 'toy regulariser weight'),
             Flag('toy_every', 2, POSITIVE_INT, 'toy: iterations between its terms'))

    def setup(self):
        self.every = self.config['toy_every']
        self.running = torch.zeros((), device=self.device)
        self.calls = 0

    def D_terms(self, b):
        penalty = self.weight * (b.D_real.mean() - self.running).square()
        self.running.lerp_(b.D_real.detach().mean(), 0.5)
        self.calls += 1
        return {'D_loss_toy': penalty}

    def log(self):
        return {'toy_running': self.running}

    def state_dict(self):
        return {'running': float(self.running), 'calls': self.calls}

    def load_state_dict(self, state):
        self.running.fill_(state['running'])
        self.calls = state['calls']


@pytest.fixture
def toy_registered():
    register(MeanMatch)
    yield
    objectives.REGULARISERS.pop('toy')


LAUNCH = '''
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import flags, objectives, test_objectives, train
objectives.register(test_objectives.MeanMatch)
sys.exit(flags.run_cli(train.main, 'train.py'))
'''
TOY_FLAGS = ['--G_ch', '4', '--D_ch', '4', '--dim_z', '16', '--shared_dim', '8', '--G_shared',
             '--hier', '--G_attn', '0', '--D_attn', '0', '--batch_size', '4',
             '--num_D_steps', '1', '--num_workers', '0', '--test_every', '0', '--ema',
             '--use_ema', '--shuffle', '--log_every', '1', '--logstyle', '%.10e',
             '--experiment_name', 'toy', '--use_multiepoch_sampler', '--num_epochs', '6',
             '--save_every', '3', '--toy', '0.5', '--toy_every', '2']


def toy_flags(root, data):
    return ['--dataset', str(data), '--base_root', str(root), *TOY_FLAGS]


def test_a_new_objective_trains_checkpoints_survives_sigkill_and_resumes_exactly(
        tmp_path, toy_registered):
    from test_plot_logs import plot_logs  # the plot script, as a module
    data = write_hdf5(tmp_path / 'tiny.hdf5')
    straight = tmp_path / 'straight'
    train.main(toy_flags(straight, data))

    killed = tmp_path / 'killed'
    script = tmp_path / 'launch.py'
    script.write_text(LAUNCH.format(tests=str(ROOT / 'tests'), root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), *toy_flags(killed, data)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = killed / 'weights' / 'toy' / 'state_dict.pth'
    deadline = time.time() + 120
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved = utils.load_file(str(state_file))
    assert 0 < saved['itr'] < 24
    train.main(toy_flags(killed, data) + ['--resume'])

    for run in (straight, killed):
        extra = utils.load_file(str(run / 'weights' / 'toy' / 'state_dict.pth'))
        assert extra['objectives']['toy']['calls'] == 12  # every other iteration of 24
    logs = {run: {name: (run / 'logs' / 'toy' / f'{name}.log').read_text()
                  for name in ('D_loss_toy', 'toy_running', 'D_loss_real', 'G_loss')}
            for run in (straight, killed)}
    assert logs[straight] == logs[killed]
    assert len(logs[straight]['D_loss_toy'].splitlines()) == 23  # from iteration 2 on
    for name in ('G', 'D', 'G_ema'):
        a = utils.load_file(str(straight / 'weights' / 'toy' / f'{name}.pth'))
        b = utils.load_file(str(killed / 'weights' / 'toy' / f'{name}.pth'))
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    panels = plot_logs.loss_series(str(straight / 'logs' / 'toy'))
    assert 'D_loss_toy' in panels['D regularisers (weighted)'] and 'toy_running' in panels['toy']
    written = plot_logs.plot_run(str(straight / 'logs'), 'toy')
    assert str(straight / 'logs' / 'toy' / 'plots' / 'losses.png') in written
    config = json.loads((straight / 'weights' / 'toy' / 'config.json').read_text())
    assert config['toy'] == 0.5 and config['toy_every'] == 2


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_r3gan_trains_under_mixed_precision_without_non_finite_values(tmp_path, amp):
    """--loss rpgan --R1 --R2 under autocast (and fp16's grad scaler): every logged value of
    every iteration is finite (a non-finite one stops the run with FloatingPointError)."""
    data = write_hdf5(tmp_path / 'tiny.hdf5')
    flags = ['--dataset', str(data), '--base_root', str(tmp_path), *TOY_FLAGS[:-4],
             '--loss', 'rpgan', '--R1', '1', '--R2', '1', '--amp', amp, '--num_epochs', '3']
    train.main(flags)
    for name in ('D_loss', 'D_loss_R1', 'D_loss_R2', 'G_loss'):
        values = [float(line.split(':')[1]) for line in
                  (tmp_path / 'logs' / 'toy' / f'{name}.log').read_text().splitlines()]
        assert len(values) == 12 and all(torch.isfinite(torch.tensor(values))), name


def test_the_readme_example_objective_is_complete_and_trains(tmp_path):
    """README "Add an objective": its code, pasted at the end of train_fns.py (here: run in
    train_fns' namespace), is all a new regulariser needs to train, log and name its run."""
    readme = (ROOT / 'README.md').read_text()
    section = readme[readme.index('### Add an objective'):]
    start = section.index('```python\n') + len('```python\n')
    code = section[start:section.index('\n```', start)]
    assert '@register' in code
    namespace = dict(vars(train_fns))
    exec(code, namespace)
    try:
        data = write_hdf5(tmp_path / 'tiny.hdf5')
        flags = ['--dataset', str(data), '--base_root', str(tmp_path), *TOY_FLAGS[:-8],
                 '--num_epochs', '1', '--save_every', '0', '--drift', '0.001',
                 '--drift_every', '2']
        train.main(flags)
        log = (tmp_path / 'logs' / 'toy' / 'D_loss_drift.log').read_text().splitlines()
        assert [int(line.split(':')[0]) for line in log] == [2, 3, 4]  # computed at 2 and 4
        assert name_from_config({**vars(utils.prepare_parser().parse_args(flags)),
                                 'experiment_name': ''}).endswith('_drift-0.001_drift_every-2')
    finally:
        objectives.REGULARISERS.pop('drift', None)


def test_resume_finds_a_run_named_before_post_2019_flags_joined_names(tmp_path, capsys):
    data = write_hdf5(tmp_path / 'tiny.hdf5')
    flags = ['--dataset', str(data), '--base_root', str(tmp_path), *TOY_FLAGS[:-8],
             '--save_every', '4', '--loss', 'lsgan']
    flags.remove('--experiment_name')
    flags.remove('toy')
    old_name = name_from_config(vars(utils.prepare_parser().parse_args(flags)), legacy=True)
    train.main(flags + ['--num_epochs', '1', '--experiment_name', old_name])
    state = train.main(flags + ['--num_epochs', '2', '--resume'])
    assert state['itr'] == 8 and 'resuming ' + old_name in capsys.readouterr().out
    assert [p.name for p in (tmp_path / 'weights').iterdir()] == [old_name]
