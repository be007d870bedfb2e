"""SigLIP (Zhai et al. 2023): pairwise sigmoid loss with a learnable bias.

Initialisation from the paper: t' = log 10 (scale 10), b = -10.
"""
from clipjax import losses
from clipjax.methods.base import Method


class SigLIP(Method):
  init_logit_scale = 10.0
  init_logit_bias = -10.0

  def loss_from_embeddings(self, variables, aux, emb, batch):
    del aux, batch
    sb = self.scale_and_bias(variables['params'])
    loss = losses.siglip_loss(emb['image_emb'], emb['text_emb'], sb['logit_scale'],
                              sb['logit_bias'], **self.loss_kwargs())
    return loss, {'logit_scale': sb['logit_scale'], 'logit_bias': sb['logit_bias']}


METHOD = SigLIP
