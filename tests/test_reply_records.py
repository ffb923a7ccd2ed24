"""Replies whose records are of the wrong kind: the inspector and its salvage refuse them, they never crash.

Found by the type checker: `salvage_train_reply` read a rejected training reply's 'arrays' as an ArrayRecord
whatever record it was, so a lender that sent its 'arrays' as a MetricRecord or ConfigRecord raised an
AttributeError out of the coordinator's screening of the round's replies (the run stopped, where the reply should
only be rejected, its release still accounted).
"""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from federation.messages import ReplyRejected, inspect_reply, salvage_train_reply
from federation.model import array_shapes, build_model


@pytest.fixture(autouse=True)
def _task_identity():
    # flwr.supercore is Flower's internal package (checked against flwr 1.42.0); a Message outside a run needs it.
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def _reply(content: dict, kind: str = "train") -> Message:
    ins = Message(RecordDict({}), dst_node_id=5, message_type=kind)
    ins.metadata.__dict__["_message_id"] = "x"  # private Metadata field (flwr 1.42.0): a reply needs an id
    return Message(RecordDict(content), reply_to=ins)


METRICS = {"num-examples": 10, "declined": 0, "epsilon": 0.5}


@pytest.mark.parametrize("arrays", [MetricRecord({"linear.weight": 1.0}), ConfigRecord({"linear.weight": "x"})])
def test_salvage_of_a_reply_whose_arrays_are_not_an_array_record(arrays):
    reply = _reply({"arrays": arrays, "metrics": MetricRecord(METRICS)})
    with pytest.raises(ReplyRejected, match="must hold the model arrays"):
        inspect_reply(reply, array_shapes(build_model("logreg", 4)))
    salvaged = salvage_train_reply(reply)
    assert salvaged is not None and salvaged["metrics"] == METRICS and salvaged["arrays"] == {}


def test_salvage_of_a_reply_whose_metrics_are_arrays():
    model = build_model("logreg", 4)
    reply = _reply({"arrays": ArrayRecord(model.state_dict()), "metrics": ArrayRecord(model.state_dict())})
    with pytest.raises(ReplyRejected, match="must be a MetricRecord"):
        inspect_reply(reply, array_shapes(model))
    assert salvage_train_reply(reply) is None


def test_a_manifest_reply_of_the_wrong_record_kind_is_rejected():
    with pytest.raises(ReplyRejected, match="exactly one ConfigRecord 'manifest'"):
        inspect_reply(_reply({"manifest": MetricRecord({"lender-id": 1})}, kind="query.manifest"))
