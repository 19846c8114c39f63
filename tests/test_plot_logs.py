"""Tests of logs/plot_logs.py: spike-proof loss panels, smoothing, the PNGs and the CLI."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT

_spec = importlib.util.spec_from_file_location('plot_logs', ROOT / 'logs' / 'plot_logs.py')
plot_logs = importlib.util.module_from_spec(_spec)  # logs/ is a folder, not a package
_spec.loader.exec_module(plot_logs)

SPIKE = 1e4  # the first logged iteration of every loss, as after a bad start


def loss_series(n: int, offset: float, seed: int) -> np.ndarray:
    """n noisy loss values around `offset`, drifting down, with a huge first value."""
    rng = np.random.default_rng(seed)
    values = offset + 0.3 * np.exp(-np.arange(n) / n) + 0.1 * rng.standard_normal(n)
    values[0] = SPIKE
    return values


def write_logs(root: Path, exp: str, n: int = 400) -> dict[str, np.ndarray]:
    """Synthetic logs in the layout train.py writes; returns the loss values written."""
    run = root / exp
    run.mkdir(parents=True)
    losses = {}
    for seed, (name, offset) in enumerate((('G_loss', 1.0), ('D_loss_real', 0.5),
                                           ('D_loss_fake', 0.4))):
        losses[name] = loss_series(n, offset, seed)
        (run / f'{name}.log').write_text(
            ''.join(f'{i + 1}: {v:.6e}\n' for i, v in enumerate(losses[name])))
    for layer in ('blocks_0_0_conv1_sv0', 'linear_sv0'):
        for net in ('G', 'D'):
            (run / f'{net}_{layer}.log').write_text(
                ''.join(f'{i}: {1 + i / 100:3.3e}\n' for i in range(10, 201, 10)))
    records = [dict(itr=50, IS_mean=2.0, IS_std=0.1, FID=None, _stamp=0.0),
               dict(itr=100, IS_mean=3.0, IS_std=0.2, FID=80.0, _stamp=1.0),
               dict(itr=150, IS_mean=3.5, IS_std=0.1, FID=70.0, _stamp=2.0)]
    (root / f'{exp}_log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    return losses


def test_smooth_is_a_centred_mean():
    """Window 3 averages each point with both neighbours (one at the ends); length kept."""
    out = plot_logs.smooth(np.array([0.0, 3.0, 0.0, 3.0, 0.0]), 3)
    np.testing.assert_allclose(out, [1.5, 1.0, 2.0, 1.0, 1.5])
    np.testing.assert_array_equal(plot_logs.smooth(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_smooth_reduces_variance_and_keeps_the_mean():
    """On white noise a 21-point mean cuts the variance ~20x and keeps the level."""
    noise = 2.0 + np.random.default_rng(0).standard_normal(5000)
    out = plot_logs.smooth(noise, 21)
    assert out.var() < noise.var() / 10
    assert abs(out.mean() - noise.mean()) < 0.01


def test_robust_ylim_excludes_a_spike_even_in_short_series():
    """One spike among 20 or 2000 points is left out; every other point is inside."""
    for n in (20, 2000):
        values = np.linspace(0.0, 1.0, n)
        values[0] = SPIKE
        lo, hi = plot_logs.robust_ylim(values)
        assert lo <= values[1:].min() and values[1:].max() <= hi < 2
    assert plot_logs.robust_ylim(np.full(5, 3.0)) == pytest.approx((2.85, 3.15))
    assert plot_logs.robust_ylim(np.array([np.nan, np.inf])) == (-1.0, 1.0)


def test_loss_panels_exclude_the_spike_and_show_the_bulk(tmp_path):
    """D (real, fake) and G get their own panels; each y-range holds the 1st-99th percentile
    of its losses but not the start-up spike; each smoothed line varies less than its raw one."""
    losses = write_logs(tmp_path, 'exp')
    fig = plot_logs.loss_figure(str(tmp_path / 'exp'))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ['D losses', 'G loss']
    for ax, names in zip(axes, (('D_loss_real', 'D_loss_fake'), ('G_loss',))):
        values = np.concatenate([losses[n] for n in names])
        lo, hi = ax.get_ylim()
        assert hi < SPIKE / 100
        bulk = np.percentile(values, [1, 99])
        assert lo < bulk[0] and hi > bulk[1]
        assert hi - lo < 4 * (bulk[1] - bulk[0])  # the bulk fills the panel
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert [label.split(',')[0] for label in labels] == list(names)
        cut = int(ax.texts[0].get_text().split()[0])  # 'k of n points off-scale'
        assert len(names) <= cut < 0.05 * len(values)  # the spikes and a few tail points
        raw_lines, smooth_lines = ax.lines[0::2], ax.lines[1::2]
        for raw, smoothed in zip(raw_lines, smooth_lines):
            assert raw.get_alpha() < 0.5 and smoothed.get_alpha() is None
            tail = slice(len(raw.get_ydata()) // 10, None)  # away from the spike
            assert np.var(smoothed.get_ydata()[tail]) < np.var(raw.get_ydata()[tail]) / 3


def test_non_finite_losses_are_dropped_and_counted(tmp_path):
    """A nan or inf line (a diverged run) neither breaks the plot nor sets its range."""
    run = tmp_path / 'exp'
    run.mkdir()
    (run / 'G_loss.log').write_text(''.join(
        f'{i}: {v}\n' for i, v in enumerate(['nan', 'inf'] + [1.0 + 0.01 * i for i in range(98)])))
    fig = plot_logs.loss_figure(str(run))
    (ax,) = fig.axes
    assert ax.get_title() == 'G loss' and np.isfinite(ax.get_ylim()).all()
    assert ax.get_ylim()[1] < 3 and ax.texts[0].get_text().startswith('2 of 100')


def test_plot_logs_writes_pngs(tmp_path, capsys, monkeypatch):
    """Losses, IS/FID and both SV plots are written as PNGs and printed."""
    write_logs(tmp_path / 'logs', 'exp')
    out = tmp_path / 'plots'
    monkeypatch.setattr('sys.argv', ['plot_logs.py', '--logs_root', str(tmp_path / 'logs'),
                                     '--experiment_name', 'exp', '--out', str(out),
                                     '--smooth', '5'])
    plot_logs.main()
    printed = capsys.readouterr().out.split()
    names = ('losses.png', 'IS_FID.png', 'G_SVs.png', 'D_SVs.png')
    assert printed == [str(out / n) for n in names]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b'\x89PNG') and len(data) > 1000


def test_plot_logs_default_output_folder(tmp_path):
    """Without --out the PNGs go to <logs_root>/<exp>/plots/."""
    write_logs(tmp_path, 'exp')
    paths = plot_logs.plot_run(str(tmp_path), 'exp')
    assert {os.path.dirname(p) for p in paths} == {str(tmp_path / 'exp' / 'plots')}
    assert len(paths) == 4 and all(os.path.getsize(p) > 1000 for p in paths)


def test_plot_logs_skips_absent(tmp_path, capsys):
    """A run with only a metrics log gets the IS/FID plot and a note for each other plot."""
    (tmp_path / 'exp_log.jsonl').write_text(json.dumps(dict(itr=10, IS_mean=1.5, IS_std=0.1,
                                                            FID=None)) + '\n')
    paths = plot_logs.plot_run(str(tmp_path), 'exp', str(tmp_path / 'out'))
    assert [os.path.basename(p) for p in paths] == ['IS_FID.png']
    notes = capsys.readouterr().out
    assert 'skipped losses' in notes and 'skipped G singular values' in notes


def test_plot_logs_missing_experiment(tmp_path, capsys, monkeypatch):
    """No logs at all: a clear error naming the experiment and exit status 1."""
    with pytest.raises(FileNotFoundError, match="no logs for experiment 'nope'"):
        plot_logs.plot_run(str(tmp_path), 'nope')
    monkeypatch.setattr('sys.argv', ['plot_logs.py', '--logs_root', str(tmp_path),
                                     '--experiment_name', 'nope'])
    with pytest.raises(SystemExit) as exc:
        plot_logs.main()
    assert exc.value.code == 1
    assert "no logs for experiment 'nope'" in capsys.readouterr().err


def test_metrics_plot_adds_kid_and_precision_recall_panels_when_logged(tmp_path, monkeypatch):
    """Tests that logged KID and P/R (a real-features file existed) get two more panels with
    their points; a log without them keeps the IS and FID panels only."""
    figures = []
    monkeypatch.setattr(plot_logs, '_save', lambda fig, path: figures.append(fig) or path)
    records = [dict(itr=50, IS_mean=2.0, IS_std=0.1, FID=90.0),  # before the features file
               dict(itr=100, IS_mean=3.0, IS_std=0.2, FID=80.0, KID_mean=0.05, KID_std=0.01,
                    precision=0.4, recall=0.2),
               dict(itr=150, IS_mean=3.5, IS_std=0.1, FID=70.0, KID_mean=0.03, KID_std=0.01,
                    precision=0.6, recall=0.3)]
    path = tmp_path / 'exp_log.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    plot_logs.plot_metrics(str(path), str(tmp_path))
    path.write_text(''.join(json.dumps(r) + '\n' for r in records[:1]))
    plot_logs.plot_metrics(str(path), str(tmp_path))
    with_kid, without = figures
    assert [ax.get_title() for ax in without.axes] == ['Inception Score', 'FID']
    ax_kid, ax_pr = with_kid.axes[2:]
    assert ax_kid.get_title() == 'KID (lower is better)'
    assert list(ax_kid.lines[0].get_ydata()) == [0.05, 0.03]  # then the error bar caps
    lines = {line.get_label(): list(line.get_ydata()) for line in ax_pr.lines}
    assert lines == {'precision': [0.4, 0.6], 'recall': [0.2, 0.3]}


def test_torn_and_blank_lines_are_skipped_naming_the_file(tmp_path):
    """A kill can leave a torn last line: `301: 2.5e+` stopped plot_logs.py with ValueError,
    a cut JSON record with JSONDecodeError."""
    write_logs(tmp_path, 'exp', n=50)
    run = tmp_path / 'exp'
    with open(run / 'D_loss_real.log', 'a') as f:
        f.write('\n301: 2.5e+')
    with open(tmp_path / 'exp_log.jsonl', 'w') as f:
        f.write('{"itr": 10, "IS_mean": 1.5, "IS_std": 0.1, "FID": 300.0}\n{"itr": 20, "IS_m')
    with pytest.warns(UserWarning, match=r'D_loss_real.log: skipped 1 unreadable line\(s\) '
                                         r'\(line 52\)'):
        itrs, values = plot_logs.read_log(str(run / 'D_loss_real.log'))
    assert list(itrs) == list(range(1, 51)) and len(values) == 50
    with pytest.warns(UserWarning, match=r'exp_log.jsonl: skipped 1 unreadable line\(s\) '
                                         r'\(line 2\)'):
        assert [r['itr'] for r in plot_logs.read_jsonl(str(tmp_path / 'exp_log.jsonl'))] == [10]
    with pytest.warns(UserWarning):
        paths = plot_logs.plot_run(str(tmp_path), 'exp')
    assert {os.path.basename(p) for p in paths} >= {'losses.png', 'IS_FID.png'}
