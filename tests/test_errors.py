"""One base for every bad-input error (`MMGLInputError`): each error class of the project subclasses it, its
message names the location, and the command wrapper reports it by type."""
import importlib
import inspect
import pickle
import pkgutil

import pytest

import processing
from processing.data.cli import EXIT_BAD_INPUT, find_bad_input, run_command
from processing.errors import MMGLInputError, format_location


def _project_error_classes():
    found = {}
    for info in pkgutil.walk_packages(processing.__path__, "processing."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            # Private classes (`_FetchFailure`, `_BadGzip`) are a module's own control flow, caught where raised.
            public = not name.startswith("_")
            if public and inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_project_error_class_subclasses_the_base():
    classes = _project_error_classes()
    # The ones the command wrapper used to list by module name, and the rest.
    for name in ("processing.data.tfrecord_io.TFRecordCorruptError", "processing.data.wikiweb2m.WikiWeb2MFormatError",
                 "processing.data.wikiweb2m.EmptyInputError", "processing.data.image_fetcher.URLListError",
                 "processing.page_graph.PageStructureError", "processing.embedding_cache.CorruptShardError",
                 "processing.image_source.MissingImagesError", "processing.atomic_write.DiskFullError",
                 "processing.loading.InputFileError"):
        assert name in classes, name
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, MMGLInputError) and cls is not MMGLInputError)
    assert outside == []


def test_format_location_outermost_first():
    assert format_location("a.tfrecord", 12, "P", 1, 0, "section_text") == (
        "a.tfrecord: record at byte offset 12, page 'P', section 1, image 0, field 'section_text'")
    assert format_location(page="P", field="title") == "page 'P', field 'title'"
    assert format_location() == ""
    err = MMGLInputError("expected a list", file="f.json", field="images")
    assert str(err) == "f.json, field 'images': expected a list"
    assert (err.file, err.field, err.page, err.message) == ("f.json", "images", None, "expected a list")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is MMGLInputError and str(again) == str(err) and again.field == "images"


def test_subclass_messages_and_pickling():
    from processing.data.wikiweb2m import WikiWeb2MFormatError
    from processing.page_graph import PageStructureError

    err = WikiWeb2MFormatError("not UTF-8", "x.tfrecord", 40, page="P", field="section_text", section=2)
    assert str(err) == "x.tfrecord: record at byte offset 40, page 'P', field 'section_text', section 2: not UTF-8"
    assert isinstance(err, ValueError) and isinstance(err, MMGLInputError) and err.file == "x.tfrecord"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    page_err = PageStructureError("expected a dict", page="T", field="sections", section=0)
    assert str(page_err) == "page 'T', section 0, field 'sections': expected a dict"
    assert str(pickle.loads(pickle.dumps(page_err))) == str(page_err)


class _ThirdPartyLooking(MMGLInputError, RuntimeError):
    """A subclass the wrapper has never heard of, raised from a file outside the project's folders."""


def test_command_wrapper_catches_by_type(capsys):
    def main(argv):
        raise _ThirdPartyLooking("bad value", file="in.json", field="x")

    assert run_command(main, []) == EXIT_BAD_INPUT
    assert "error: in.json, field 'x': bad value" in capsys.readouterr().err
    # A plain RuntimeError from outside the project stays a bug (traceback).
    with pytest.raises(RuntimeError):
        run_command(lambda argv: (_ for _ in ()).throw(RuntimeError("bug")), [])
    wrapped = ValueError("outer")
    wrapped.__cause__ = _ThirdPartyLooking("inner")
    assert isinstance(find_bad_input(wrapped), _ThirdPartyLooking)
