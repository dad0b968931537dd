"""gatebeat's framework: the timer engine, triggers, transports, settings, metrics and runner."""

from __future__ import annotations

from service.records import Outcome, SchedulePolicy, TickObserver, TickRecord, TimerStatistics
from service.schedule import DelaySchedule, FixedSchedule, Schedule, Slot
from service.scheduler import Scheduler
from service.timer import Timer
from service.triggers import Any, At, Cron, Delay, Every, Forever, Once, OnShutDown, OnStartUp

__version__ = "0.1.0"

__all__ = [
    "Any",
    "At",
    "Cron",
    "Delay",
    "DelaySchedule",
    "Every",
    "FixedSchedule",
    "Forever",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "Outcome",
    "Schedule",
    "SchedulePolicy",
    "Scheduler",
    "Slot",
    "TickObserver",
    "TickRecord",
    "Timer",
    "TimerStatistics",
    "__version__",
]
