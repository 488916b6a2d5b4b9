"""snap2caption_service.core.versions: the version a model folder or hub name is served as."""

from snap2caption_service.core.versions import model_version


def test_version_of_demo_style_folder(tmp_path):
    (tmp_path / "snap2caption_demo.json").write_text('{"version": "demo-abc"}')
    assert model_version(str(tmp_path)) == "demo-abc"
    assert model_version("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
