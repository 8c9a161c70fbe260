"""medseg.inference.predictor: the sliding-window settings a prediction uses."""


def test_predict_uses_the_sliding_window_settings_the_model_was_validated_with():
    from types import SimpleNamespace

    from medseg.config import ValidationConfig
    from medseg.inference.predictor import sliding_window_settings

    model = SimpleNamespace(meta={"sliding_window": {"overlap": 0.25, "sw_batch_size": 2}})
    assert sliding_window_settings(model) == (0.25, 2)
    assert sliding_window_settings(model, overlap=0.75, sw_batch_size=8) == (0.75, 8)  # the user's choice wins
    defaults = ValidationConfig()
    assert sliding_window_settings(SimpleNamespace(meta={})) == (defaults.overlap, defaults.sw_batch_size)
