"""Class pre-warm: before a course's session, the enrolled students' servers start, so that at the start of
class a click lands in a running server. ``records`` keeps what was warmed and how it went (used, wasted),
``planner`` decides who is warmed within the memory budget; ``spawner.services.warmer`` runs it."""
