"""The operator console: server-rendered pages at /admin/ over the Inspector (see
verimail_shared.inspector), signed in with ADMIN_TOKEN. See docs/decisions/081."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from verimail_api.console import views


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", views.to_overview),
        Route("/admin/", views.overview, methods=["GET"]),
        Route("/admin/login", views.login_form, methods=["GET"]),
        Route("/admin/login", views.login, methods=["POST"]),
        Route("/admin/logout", views.logout, methods=["POST"]),
        Route("/admin/console.css", views.stylesheet, methods=["GET"]),
        Route("/admin/queues", views.queue_list, methods=["GET"]),
        Route("/admin/queues/{name}", views.queue_jobs, methods=["GET"]),
        Route("/admin/queues/{name}/jobs/{job_id}/run", views.run_job_now, methods=["POST"]),
        Route("/admin/queues/{name}/jobs/{job_id}/delete", views.delete_job, methods=["POST"]),
        Route("/admin/dead-letters", views.dead_letters, methods=["GET"]),
        Route("/admin/dead-letters/requeue", views.requeue_matching, methods=["POST"]),
        Route("/admin/dead-letters/{id:int}", views.dead_letter, methods=["GET"]),
        Route("/admin/dead-letters/{id:int}/requeue", views.requeue_dead, methods=["POST"]),
        Route("/admin/dead-letters/{id:int}/delete", views.delete_dead, methods=["POST"]),
        Route("/admin/lookup", views.lookup, methods=["GET"]),
        Route("/admin/lookup/resend", views.resend, methods=["POST"]),
    ]
