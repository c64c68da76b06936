"""Former home of the saved-folder code, now in :mod:`dcfg_io` (shared by every package); re-exported here.

Import from :mod:`dcfg_io.folders`, :mod:`dcfg_io.reads`, :mod:`dcfg_io.tensors` and :mod:`dcfg_io.rollback`
instead.
"""
from dcfg_io.folders import SavedKind, check_save_target, find_saved_dir, save_dir
from dcfg_io.reads import MAX_JSON_BYTES, check_entry, check_keys, read_checked, read_json, read_json_object
from dcfg_io.rollback import restored_on_error
from dcfg_io.tensors import MAX_HEADER_BYTES, check_weight_shapes, read_safetensors_header

__all__ = ["MAX_HEADER_BYTES", "MAX_JSON_BYTES", "SavedKind", "check_entry", "check_keys", "check_save_target",
           "check_weight_shapes", "find_saved_dir", "read_checked", "read_json", "read_json_object",
           "read_safetensors_header", "restored_on_error", "save_dir"]
