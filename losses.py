"""The 2019 release's `losses` module: its loss functions under their 2019 names.

The losses live once, in train_fns.py, with the objectives built on them (a new objective is a
registered class there); this module keeps `import losses` and `losses.loss_hinge_dis(...)`
of 2019 code working.

Example:
    loss_real, loss_fake = losses.discriminator_loss(D_fake, D_real)  # hinge, as in 2019
    G_loss = losses.generator_loss(D_fake)
"""
# 2019 names (compatibility)
from train_fns import loss_dcgan_dis, loss_dcgan_gen, loss_hinge_dis, loss_hinge_gen

__all__ = ['loss_dcgan_dis', 'loss_dcgan_gen', 'loss_hinge_dis', 'loss_hinge_gen',
           'generator_loss', 'discriminator_loss']

# 2019's defaults: the hinge loss (--loss hinge).
generator_loss = loss_hinge_gen
discriminator_loss = loss_hinge_dis
