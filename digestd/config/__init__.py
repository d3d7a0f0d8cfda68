"""Reading the admin's settings file: YAML with positions for every value, the fast screened YAML path,
the pydantic settings with their `DIGESTD_*` overrides."""
