"""The base of the operators that run the bundle's model on jobs."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from motfm_deploy.jobs import Job, process
from motfm_deploy.model import Bundle, Model


class ModelOperator(Operator):
    """Applies ``work(model, job)`` to each job it receives; the bundle loads on the first job.

    Named input:
        jobs: list[Job].
    Named output:
        jobs: the same jobs with their images (or their error).
    """

    @staticmethod
    def work(model: Model, job: Job) -> Job:
        raise NotImplementedError

    def __init__(self, fragment: Fragment, *args, bundle: Bundle, **kwargs) -> None:
        self.bundle = bundle
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("jobs")
        spec.output("jobs")

    def compute(self, op_input, op_output, context) -> None:
        jobs = op_input.receive("jobs")
        op_output.emit(process(jobs, lambda job: self.work(self.bundle.model, job)), "jobs")
