from novelentitymatcher_faiss.text.normalize import NormalizerSettings, normalize_text


def test_default_strips_lowercases_and_collapses_whitespace():
    assert normalize_text("  Apple   Inc.\t\n") == "apple inc."


def test_nfkd_folds_compatibility_characters():
    assert normalize_text("ＡＢＣ ﬁle") == "abc file"


def test_accent_and_punctuation_removal_are_optional():
    text = "Café-Crème, S.A."
    assert normalize_text(text) == normalize_text(text, NormalizerSettings())
    assert "é" not in normalize_text(text, NormalizerSettings(remove_accents=True))
    plain = normalize_text(text, NormalizerSettings(remove_accents=True, remove_punctuation=True))
    assert plain == "cafecreme sa"


def test_disabled_returns_text_unchanged():
    assert normalize_text("  MiXed  ", NormalizerSettings(enabled=False)) == "  MiXed  "


def test_settings_round_trip():
    settings = NormalizerSettings(remove_accents=True)
    assert NormalizerSettings.from_dict(settings.to_dict()) == settings
