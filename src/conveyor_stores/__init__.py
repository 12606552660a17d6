"""The stores that ship with conveyor, one package each, registered under the entry-point group
``conveyor.stores``. Each implements :class:`conveyor.store.Store` and imports nothing from
conveyor's core."""
