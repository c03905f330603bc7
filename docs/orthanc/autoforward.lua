-- meshpacs: forward every study to the meshpacs node once Orthanc considers it complete.
--
-- Orthanc calls OnStableStudy when a study has received no new instance for "StableAge"
-- seconds. The study is then sent, as one asynchronous C-STORE job over one association,
-- to the modality "meshnode", which must be declared in "DicomModalities"
-- (see orthanc-meshpacs.json next to this file). Checked with Orthanc 1.10.1 (Debian 12).
--
-- If more instances of the study arrive later, the study becomes stable again and is sent
-- again: the node stores identical instances once, so repeats cost time, not space.
-- A failed send stays in Orthanc's job list (GET /jobs); POST /jobs/<id>/resubmit retries it.
--
-- Do not replace the REST call by SendToModality(studyId, 'meshnode'): in Orthanc 1.10
-- that helper expects an instance ID and fails for a study ("Unable to read attachment").
-- The message below prints Orthanc's internal study ID only, no patient data.

function OnStableStudy(studyId, tags, metadata)
  print('meshpacs: forwarding stable study ' .. studyId .. ' to meshnode')
  RestApiPost('/modalities/meshnode/store',
              '{"Resources" : ["' .. studyId .. '"], "Asynchronous" : true}')
end
