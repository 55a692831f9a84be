"""The Flask face: the extension (:mod:`.extension`), the admin pages (:mod:`.views`), the
token-protected scheduled-task endpoint (:mod:`.tasks`), CSRF (:mod:`.csrf`) and charts."""
