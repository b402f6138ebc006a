"""fakesnow's `server()` context manager, captured before its first call shadows it.

`fakesnow.server()` imports its submodule `fakesnow.server` when first called, which replaces the
package attribute: a second caller in the same process would find the module, not the function.
"""

import fakesnow

serve_fakesnow = fakesnow.server
assert callable(serve_fakesnow), "import conversion_sync_tests.fakesnow_server before fakesnow.server() runs"
