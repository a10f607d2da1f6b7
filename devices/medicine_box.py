"""The medicine box protocol and a box's behaviour, independent of any transport.

A box says hello with its drawers (``box:hello``, again ``box:drawers`` when they change), obeys
``box:command`` (light a drawer's LED and sound the buzzer for a due dose, or clear it) by
acknowledging it, and reports drawers opened and closed (``box:drawer-opened``,
``box:drawer-closed``). ``BoxBehaviour`` is what the simulator's box does with a command under a
scenario: open the right drawer on time, late, never, or open the wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_DRAWERS = 32
DrawerIndex = Annotated[int, Field(ge=1, le=MAX_DRAWERS)]
BOX_SCENARIOS = ("on_time", "late", "never", "wrong_drawer")
Scenario = Literal["on_time", "late", "never", "wrong_drawer"]


class Drawer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: DrawerIndex
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] | None = None


class BoxDrawers(BaseModel):
    """``box:drawers``: the drawers the box has (indexes unique)."""

    model_config = ConfigDict(extra="forbid")
    drawers: list[Drawer] = Field(min_length=1, max_length=MAX_DRAWERS)

    def model_post_init(self, _: object) -> None:
        if len({d.index for d in self.drawers}) != len(self.drawers):
            raise ValueError("drawer indexes must be unique")


class BoxHello(BoxDrawers):
    """``box:hello``: sent on every connect."""

    firmware: Annotated[str, StringConstraints(max_length=40, pattern=r"^[\w .+-]*$")] | None = None
    battery: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="percent")


class DrawerEvent(BaseModel):
    """``box:drawer-opened`` / ``box:drawer-closed``; ``at_ms`` is the box's own clock, kept as reported."""

    model_config = ConfigDict(extra="forbid")
    drawer: DrawerIndex
    at_ms: float | None = Field(None, ge=0)


class BoxCommand(BaseModel):
    """Server → box: ``remind`` lights the drawer's LED and sounds the buzzer; ``clear`` stops both."""

    command_id: str
    action: Literal["remind", "clear"]
    drawer: DrawerIndex
    led: Literal["on", "off"]
    buzzer: bool
    dose_id: str | None = None
    attempt: int = 1


@dataclass(frozen=True)
class DrawerAction:
    after_s: float  # from the moment the command arrived
    kind: Literal["open", "close"]
    drawer: int


@dataclass
class BoxBehaviour:
    """A simulated box: lights and buzzers as commanded, and drawers opened per scenario.

    ``drop_acks`` leaves that many commands unacknowledged first (to exercise the server's retries)."""

    scenario: Scenario = "on_time"
    drawers: int = 7
    react_s: float = 0.3  # on_time: how long the patient takes to reach the box
    late_s: float = 3.0  # late: how much longer
    hold_s: float = 1.0  # how long a drawer stays open
    drop_acks: int = 0
    leds: dict[int, bool] = field(default_factory=dict)
    buzzing: bool = False
    handled: set[str] = field(default_factory=set)  # doses already acted on (a repeated command does not reopen)
    commands: list[BoxCommand] = field(default_factory=list)

    def hello(self) -> dict[str, object]:
        return {"drawers": [{"index": i, "label": f"Drawer {i}"} for i in range(1, self.drawers + 1)],
                "firmware": "sim-1.0", "battery": 87.0}

    def on_command(self, cmd: BoxCommand) -> tuple[bool, list[DrawerAction]]:
        """Apply a command; return whether to acknowledge it and the drawer actions it leads to."""
        self.commands.append(cmd)
        self.leds[cmd.drawer] = cmd.led == "on"
        self.buzzing = cmd.buzzer or (any(self.leds.values()) and self.buzzing)
        ack = True
        if self.drop_acks > 0:
            self.drop_acks -= 1
            ack = False
        if cmd.action != "remind" or cmd.dose_id is None or cmd.dose_id in self.handled:
            return ack, []
        self.handled.add(cmd.dose_id)
        return ack, self.reaction(cmd.drawer)

    def reaction(self, drawer: int) -> list[DrawerAction]:
        if self.scenario == "never":
            return []
        if self.scenario == "wrong_drawer":
            drawer = drawer % self.drawers + 1
        start = self.react_s + (self.late_s if self.scenario == "late" else 0.0)
        return [DrawerAction(start, "open", drawer), DrawerAction(start + self.hold_s, "close", drawer)]
