"""The checks every job passes before Kafka sees it, whether sent whole (api.jobs) or in parts (api.chunked)."""

from __future__ import annotations

from typing import TypeVar

from api.errors import ApiError
from api.state import ApiState
from api.template_reads import company_template
from content.validation import job_template_problems, refusal_code
from schemas.events import SCOPED_SUFFIX, JobRequested, scoped_id_room
from schemas.intake import template_data_problem
from security.callback_urls import check_callback_url, seal_query
from security.signing import Caller

JobRequestedT = TypeVar("JobRequestedT", bound=JobRequested)  # a JobRequested, or a chunked job's JobOpened


async def admit(state: ApiState, caller: Caller, job: JobRequestedT, *,
                check_templates: bool = True) -> JobRequestedT:
    """The job with its callback URL's query sealed, or an ApiError. A chunked job's templates are checked with
    its first chunk instead (check_templates=False here): the check needs a learner."""
    if caller.company_id is not None and job.company_id != caller.company_id:
        raise ApiError(403, "company_mismatch", "this key may only submit jobs of its own company")
    if SCOPED_SUFFIX.search(job.job_id):
        raise ApiError(422, "invalid_field", "a job id may not end in ..c<digits>: that form is reserved",
                       problems=[{"code": "invalid_field", "field": "job_id", "message": "reserved form"}])
    if (room := scoped_id_room(job.company_id)) < len(job.job_id):
        # Refused whether or not the id is in use: a longer id could not be scoped if another company held it,
        # and answering differently then would tell the caller that it exists (issue 11 finding 12).
        message = f"a job id of company {job.company_id} may have at most {room} characters"
        raise ApiError(422, "invalid_field", message,
                       problems=[{"code": "invalid_field", "field": "job_id", "message": message}])
    if job.callback_query_sealed is not None:
        raise ApiError(422, "invalid_field", "callback_query_sealed is set by the API, never by a client")
    too_large = template_data_problem(job.template_data, state.settings.template_data_max_bytes)
    if too_large is not None:
        assert too_large.code is not None
        raise ApiError(422, too_large.code, too_large.message, problems=[too_large.model_dump()])
    if check_templates:
        await check_job_templates(state, job)
    if job.callback_url:
        refusal = await check_callback_url(job.callback_url,
                                           allow_private=state.settings.api_allow_private_callbacks)
        if refusal is not None:
            raise ApiError(422, refusal.code, refusal.message, problems=[refusal.as_json()])
        # A token in the query (Moodle's wstoken) goes into the log sealed, never in clear (finding 13).
        base, sealed = seal_query(job.callback_url, job.job_id,
                                  state.settings.callback_url_secret.get_secret_value().encode())
        if sealed is not None:
            job = job.model_copy(update={"callback_url": base, "callback_query_sealed": sealed})
    return job


async def check_job_templates(state: ApiState, job: JobRequested) -> None:
    """Refuse a job whose template cannot work for anyone, before Kafka sees it."""
    # The company's own version of the template when it has one (the read model's view; the worker checks again
    # with what it has learnt from the templates topic).
    own = (await company_template(state.store, job.company_id, job.template_id)
           if job.type == "email" and job.content is None else None)
    if template_problems := job_template_problems(job, state.settings, email_template=own):
        raise ApiError(422, refusal_code(template_problems), template_problems[0].message,
                       problems=[p.as_json() for p in template_problems])
