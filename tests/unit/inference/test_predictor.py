"""medseg.inference.predictor: the sliding-window settings a prediction uses; the logged model's
input example under a CT plan's preprocessing."""


def test_predict_uses_the_sliding_window_settings_the_model_was_validated_with():
    from types import SimpleNamespace

    from medseg.config import ValidationConfig
    from medseg.inference.predictor import sliding_window_settings

    model = SimpleNamespace(meta={"sliding_window": {"overlap": 0.25, "sw_batch_size": 2}})
    assert sliding_window_settings(model) == (0.25, 2)
    assert sliding_window_settings(model, overlap=0.75, sw_batch_size=8) == (0.75, 8)  # the user's choice wins
    defaults = ValidationConfig()
    assert sliding_window_settings(SimpleNamespace(meta={})) == (defaults.overlap, defaults.sw_batch_size)


def test_the_logged_models_input_example_survives_a_ct_plans_clipping(tmp_path):
    """The input example MLflow predicts when a model is logged spans a CT plan's clipping window, so
    that CT preprocessing does not make it constant (OpenKBP's window is 898-2608, HU + 1024)."""
    import nibabel as nib
    import numpy as np
    import pytest

    from medseg.inference.pyfunc import IMAGE, input_example
    from medseg.plan import Plan
    from medseg.transforms import preprocessing
    plan = Plan(modality=["CT"], labels={0: "background", 1: "organ"}, target_spacing=(1.0, 1.0, 1.0),
                patch_size=(16, 16, 16), crop_foreground=True, ct_clip=(898.0, 2608.0), ct_mean=1277.0, ct_std=441.0)
    for window, constant in ((None, True), (plan.ct_clip, False)):
        image = input_example(1, intensity_range=window)[IMAGE]
        path = tmp_path / f"example_{window is None}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
        out = preprocessing(plan, keys=("image",))({"image": str(path)})["image"]
        assert (float(out.max()) == float(out.min())) is constant
    assert input_example(1, intensity_range=plan.ct_clip)[IMAGE].min() == pytest.approx(898.0)
