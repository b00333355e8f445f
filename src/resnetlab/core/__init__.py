"""What every part of resnetlab stands on: errors, configuration (params.yaml), the typed
records stages hand each other, where outputs live, devices and atomic writes.
"""
