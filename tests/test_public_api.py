"""The public surface of ``import cdi`` is pinned: changing it must be a decision."""

import cdi


def test_exported_members() -> None:
    assert sorted(cdi.__all__) == sorted([
        "import_image", "create_blank", "ImportResult", "ProgressEvent", "RetryPolicy",
        "CdiImportError", "TemporaryError", "PermanentError", "SourceUnavailable", "SourceNotFound",
        "AuthenticationFailed", "InvalidSource", "InvalidImage", "UnsafeImage", "ImageTooLarge",
        "ChecksumMismatch", "ScratchSpaceRequired",
        "upload_image", "ImageUploadResult", "ImageUploadError",
    ])
    for name in cdi.__all__:
        assert hasattr(cdi, name), name


def test_error_classes_say_if_retrying_helps() -> None:
    assert cdi.ChecksumMismatch("sha256", "a", "b").permanent
    assert cdi.ImageTooLarge(2, 1).permanent
    assert not cdi.SourceUnavailable("x").permanent
