//! `reimagen doctor`: the adapters wgpu finds and the device `auto` picks.
