"""The masking contract every MAE family (Swin, ResEnc) keeps, checked the same way for each."""

import torch


def assert_prediction_ignores_masked_pixels(mae, x: torch.Tensor, seeds: torch.Tensor, shift: float = 3.0) -> None:
    """Shifting masked pixels leaves ``predict`` unchanged; shifting visible pixels changes it."""
    mask = mae.mask(x.shape[0], seeds, x.device)
    pix = mae.reconstruct(x, seeds)[1].bool()
    pred = mae.predict(x, mask)
    torch.testing.assert_close(mae.predict(torch.where(pix, x + shift, x), mask), pred)
    assert not torch.allclose(mae.predict(torch.where(pix, x, x + shift), mask), pred)
