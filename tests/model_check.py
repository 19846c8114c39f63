"""2019-checkpoint compatibility of the models, in the format of shared/fixtures/upstream_compat.

A reference is a dict: `config`, state dicts `G`/`D`, inputs `z`/`y`/`x`, eval-mode outputs
`G_eval`/`D_eval`, the outputs of one train-mode forward run right after (`G_train`/`D_train`)
and the SN/BN buffers after it (`G_buffers_after_train`/`D_buffers_after_train`).
"""
import copy

import torch

import BigGAN
import BigGANdeep

BUFFER_NAMES = ('.u', '.sv', 'stored_')


def model_module(config: dict):
    """BigGAN or BigGANdeep, as the config says."""
    return BigGANdeep if config.get('model', 'BigGAN') == 'BigGANdeep' else BigGAN


def _forwards(G, D, ref):
    with torch.no_grad():
        return G(ref['z'], G.shared(ref['y'])), D(ref['x'], ref['y'])


def make_reference(G, D, config, z, y, x) -> dict:
    """Record a reference from live models (state is saved before any forward)."""
    ref = {'config': dict(config), 'G': copy.deepcopy(G.state_dict()),
           'D': copy.deepcopy(D.state_dict()), 'z': z, 'y': y, 'x': x}
    G.eval(), D.eval()
    ref['G_eval'], ref['D_eval'] = _forwards(G, D, ref)
    G.train(), D.train()
    ref['G_train'], ref['D_train'] = _forwards(G, D, ref)
    for name, net in (('G', G), ('D', D)):
        ref[f'{name}_buffers_after_train'] = {
            k: v.clone() for k, v in net.state_dict().items()
            if any(b in k for b in BUFFER_NAMES)}
    return ref


def check_reference(ref: dict, atol: float = 1e-4) -> None:
    """Load the reference state dicts strictly and reproduce its outputs and buffers."""
    module = model_module(ref['config'])
    G, D = module.Generator(**ref['config']), module.Discriminator(**ref['config'])
    G.load_state_dict(ref['G'], strict=True)
    D.load_state_dict(ref['D'], strict=True)
    G.eval(), D.eval()
    G_eval, D_eval = _forwards(G, D, ref)
    torch.testing.assert_close(G_eval, ref['G_eval'], atol=atol, rtol=0)
    torch.testing.assert_close(D_eval, ref['D_eval'], atol=atol, rtol=0)
    G.train(), D.train()
    G_train, D_train = _forwards(G, D, ref)
    torch.testing.assert_close(G_train, ref['G_train'], atol=atol, rtol=0)
    torch.testing.assert_close(D_train, ref['D_train'], atol=atol, rtol=0)
    for name, net in (('G', G), ('D', D)):
        state = net.state_dict()
        expected = ref[f'{name}_buffers_after_train']
        assert expected, 'reference holds no buffers'
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=atol, rtol=0, msg=key)


def check_parameter_order(ref: dict) -> None:
    """Parameters are registered in the reference's order (Adam states are keyed by it)."""
    module = model_module(ref['config'])
    for name, cls in (('G', module.Generator), ('D', module.Discriminator)):
        params = [k for k, _ in cls(**ref['config']).named_parameters()]
        assert [k for k in ref[name] if k in set(params)] == params, name
