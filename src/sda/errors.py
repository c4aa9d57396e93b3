"""The error vocabulary shared by the api, the worker and the storage.

The split that matters operationally: a `PermanentError` is the input's fault
(retrying cannot help: the job fails and the message is acknowledged); a
`TransientError` is the platform's (the message must be retried and, after
three receives, reach the DLQ where alarms see it).
"""

from __future__ import annotations


class SdaError(Exception):
    """Base of every error this package raises on purpose."""


class PermanentError(SdaError):
    """The input cannot be processed (corrupt PDF, no text layer, bad context file)."""

    def __init__(self, message: str, code: str = "INVALID_INPUT") -> None:
        super().__init__(message)
        self.code = code


class TransientError(SdaError):
    """A dependency failed (storage, queue); the same work may succeed on a retry."""


class StorageUnavailable(TransientError):
    """The jobs table or the file store cannot be reached or written."""


class QueueUnavailable(TransientError):
    """The processing queue cannot be reached."""


class JobNotFound(SdaError):
    """No job has this id."""


class JobExists(SdaError):
    """A job with this id already exists (ids are reserved by a unique insert)."""


class StatusConflict(SdaError):
    """A conditional update found the job in a status it must not overwrite."""


class FileMissing(SdaError):
    """A job file that should exist does not."""


class InvalidFileName(SdaError):
    """A storage file name that could escape the job's folder."""


class UploadError(SdaError):
    """A bad request to the API: becomes an HTTP error with a JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
