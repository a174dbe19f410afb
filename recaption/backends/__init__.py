"""Captioner backends, one module each (registered in ``recaption.captioner.BACKENDS``)."""
