"""The one base of every bad-input error the project raises, and the one way it names where the input is wrong.

A command (`processing/data/cli.py::run_command`) reports any `MMGLInputError` in one line instead of a
traceback; code reading many pages may catch a subclass to count and skip a page. Standard library only: a Hub
folder ships this file beside the processor.
"""
from __future__ import annotations

from typing import Any


def format_location(file: Any = None, record: int | None = None, page: Any = None, section: int | None = None,
                    image: int | None = None, field: str | None = None, field_holds_sections: bool = False) -> str:
    """Where bad input lies, outermost first: `"data.tfrecord: record at byte offset 12, page 'P', section 1,
    image 0, field 'section_text'"`. Parts that are `None` are left out.

    Args:
        file: the file (a path).
        record (`int`, *optional*): the record's byte offset in the file's (uncompressed) stream.
        page: the page URL, id or title.
        section (`int`, *optional*): the section's position in its page.
        image (`int`, *optional*): the image's position in its section.
        field (`str`, *optional*): the offending field.
        field_holds_sections (`bool`, *optional*, defaults to `False`): the field is a per-section list (a
            WikiWeb2M record's feature list), so it comes before the section: `"field 'section_text', section 2"`.

    Returns:
        `str`: the location, `""` when every part is `None`.
    """
    head = "" if file is None else str(file)
    if record is not None:
        head = f"{head}: record at byte offset {record}" if head else f"record at byte offset {record}"
    parts = [head] if head else []
    if page is not None:
        parts.append(f"page {page!r}")
    if field is not None and field_holds_sections:
        parts.append(f"field {field!r}")
    if section is not None:
        parts.append(f"section {section}")
    if image is not None:
        parts.append(f"image {image}")
    if field is not None and not field_holds_sections:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


class MMGLInputError(Exception):
    """Input that is not what it should be (a file, a record, a page, a section, an image or a field), as opposed to
    a bug. Every error class of the project subclasses it (most also subclass the built-in type callers expect,
    `ValueError`, `TypeError`, `RuntimeError` or `OSError`).

    Args:
        message (`str`): what is wrong and what was expected.
        file, record, page, section, image, field: where (see `format_location`); each is kept as an attribute.
    """

    #: Whether `field` is a per-section list that comes before the section in the message (`format_location`).
    field_holds_sections = False

    def __init__(self, message: str = "", *, file: Any = None, record: int | None = None, page: Any = None,
                 section: int | None = None, image: int | None = None, field: str | None = None):
        self.message = message
        self.file, self.record, self.page, self.section, self.image, self.field = file, record, page, section, image, field
        where = format_location(file, record, page, section, image, field, self.field_holds_sections)
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self):  # picklable across `datasets` / DataLoader worker processes, keyword arguments included
        return _rebuild, (type(self), self.message, self.file, self.record, self.page, self.section, self.image,
                          self.field)


def _rebuild(cls, message, file, record, page, section, image, field):
    return cls(message, file=file, record=record, page=page, section=section, image=image, field=field)


__all__ = ["MMGLInputError", "format_location"]
