"""The run: a unit's life as a state machine, the stages that move units through it, the API
limits they respect, and the wiring that starts them in one task group."""

__all__: list[str] = []
