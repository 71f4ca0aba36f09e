"""Labels: a person says what the right action for a decision was (a part of ``Engine``).

``label`` records an operator's label; an approval and a rejection that names a replacement
action are labels too (``decision/approvals.py`` writes them with the resolution, in one
transaction). A label never changes what the decision did; it is evidence: exported for
`agentd eval` (`agentd label export`), measured by `agentd report`, and handed to
``_on_label`` once committed, where the engine learns from it (``decision/learning.py``).
Each label is replicated to the peers as a key of the node's fleet state, written in the
label's transaction (``decision/label_writes.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agentd.decision.label_writes import label_writes
from agentd.errors import ConfigError, InputError
from agentd.state import labels, queries

if TYPE_CHECKING:
    from agentd.config.schema import Config, SkillConfig
    from agentd.decision.approval_writes import ResolutionWrites
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock

log = logging.getLogger(__name__)


def check_action(skill: SkillConfig | None, record: dict[str, Any], action: Any) -> str:
    """``action`` if it is one of the decision's skill's actions; InputError saying which are otherwise."""
    if skill is None:
        raise InputError(f"decision {record['id']} is of skill {record['skill']!r}, which the current config does not have;"
                         " its actions are unknown, so it cannot be labelled")
    if not isinstance(action, str) or action not in skill.actions:
        raise InputError(f"{str(action)[:40]!r} is not an action of skill {skill.name} (actions: {', '.join(skill.actions)})")
    return action


class LabelMixin:
    """The engine's labels (a part of ``Engine``; the attributes are the engine's)."""

    cfg: Config
    store: Store
    node: str
    clock: Clock
    outbound: Any

    if TYPE_CHECKING:
        def _written(self, writes: ResolutionWrites | None) -> None: ...

    def _label_skill(self, name: str) -> SkillConfig | None:
        try:
            return self.cfg.skill(name)
        except ConfigError:
            return None

    async def label(self, decision_id: str, action: str, *, by: str, note: str = "") -> dict[str, Any]:
        """Record ``action`` as the right one for a decision (its id or event id); audited.

        NotFound for an unknown decision; InputError for an action not of the decision's
        skill, or a ``by`` or ``note`` over their bounds. Returns the stored label.
        """
        record = await self.store.read(lambda c: queries.get_decision(c, decision_id))
        action = check_action(self._label_skill(record["skill"]), record, action)
        w = labels.label_for(record, action, source="operator", by=by, note=note)
        writes = self._label_writes(w, record)
        row = await self.store.add_label(w, after=writes.in_transaction)
        self._written(writes)
        await self._labelled(record, action)
        return row

    def _label_writes(self, w: labels.LabelWrite, record: dict[str, Any]) -> ResolutionWrites:
        """The label's replicated key (decision/label_writes.py), to be written in the label's transaction."""
        return label_writes(self.node, w, record.get("inputs") or {}, hlc=self.clock.now(), outbound=self.outbound)

    async def _labelled(self, record: dict[str, Any], action: str) -> None:
        """A label was committed: tell the hook; a failure there must not undo or repeat the label."""
        try:
            await self._on_label(record, action)
        except Exception:
            log.exception("after the label %s of decision %s", action, record.get("id"))

    async def _on_label(self, record: dict[str, Any], action: str) -> None:
        """Called once a label of ``record`` is committed; nothing here (``LearningMixin`` learns from it)."""
