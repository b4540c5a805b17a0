"""The default configs and label maps, installed as ``wsi_tools.configs``.

They stay here at the repo's top level for people reading and copying them; the
wheel ships them as package data, read with :func:`wsi_tools.config_file.packaged_config`.
"""
