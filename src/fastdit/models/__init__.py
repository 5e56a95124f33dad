"""Model definitions: :mod:`fastdit.models.wan` (Wan2.1 / Wan2.2 transformers)."""
