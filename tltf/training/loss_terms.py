"""Extra loss terms from plug-ins (``run.add_loss``): a model that adds them to every training step's loss."""

from __future__ import annotations

import keras


class WithLossTerms(keras.Model):
    """A functional model sharing ``model``'s layers whose loss is the compiled loss plus ``terms``.

    Each term is ``term(x, y, y_pred) -> scalar`` (x and y as the step sees them). It is a training-time wrapper:
    the saved model is the classifier itself.
    """

    def __init__(self, *args, terms=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.terms = list(terms)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        for term in self.terms:
            loss = loss + keras.ops.cast(term(x, y, y_pred), loss.dtype)
        return loss


def with_loss_terms(model: keras.Model, terms) -> keras.Model:
    """``model`` itself without terms; else a :class:`WithLossTerms` over the same layers."""
    if not terms:
        return model
    return WithLossTerms(model.inputs, model.outputs, terms=terms, name=f"{model.name}_with_losses")
