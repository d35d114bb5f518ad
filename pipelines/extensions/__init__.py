"""Extensions: manifests, loading (isolated), the narrow context an extension sees, and installing them.

``manifest`` reads ``extension.toml``; ``context`` is what an extension's ``setup(ctx)`` receives; ``loader`` finds
the built-in and user folders, imports each enabled one and collects what it declared (``LoadedExtensions``);
``state`` keeps the enabled/disabled choices; ``install`` clones, pulls and removes user extensions. The engine
side (calling the hooks) is ``pipelines.hooks``; the UI side is ``webui.extensions_ui``.
"""
