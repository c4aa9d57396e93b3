"""The Security Design Assistant: drawings in, component schedules out.

Three Lambda-style functions share this package: `sda.api.handler` (HTTP),
`sda.worker.handler` (the `processing` queue) and `sda.dlq.handler` (its DLQ).
Modules the api needs stay light; pypdf and openpyxl are imported only where used.
"""

from __future__ import annotations

__version__ = "1.0.0"
